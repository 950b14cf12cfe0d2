"""The FP32-identical rewrites a real export needs before quantization, in order: constant
sub-expressions evaluated, per-channel Mul/Add by constants (a separate bias, a learnable affine) and
BatchNormalizations folded into their
Conv/ConvTranspose/Gemm, HardSwish and HardSigmoid written out in elementwise ops replaced by
HardSwish / HardSigmoid (:mod:`trtq.model.fold`, :mod:`trtq.model.activations`). A model none of them
applies to is returned untouched, byte for byte."""

from __future__ import annotations

from pathlib import Path

import onnx

from .activations import hard_swish_ops, rewrite_hard_swish
from .fold import fold_batchnorm, fold_channel_affine, fold_constants, fold_into_next_conv
from .load import settle

# affine folds run again after BatchNormalization folding: Conv → Add(bias) → BN → Mul(scale)
STEPS = (("constants", fold_constants), ("affine", fold_channel_affine), ("batchnorm", fold_batchnorm),
         ("affine", fold_channel_affine), ("into_conv", fold_into_next_conv), ("hard_sigmoid", rewrite_hard_swish),
         ("hard_swish", hard_swish_ops))


def simplify(model: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """``model`` rewritten (shapes inferred again when anything changed) and, per step, the
    nodes it folded or made."""
    done: dict[str, list[str]] = {}
    for name, step in STEPS:
        if made := step(model):
            done[name] = done.get(name, []) + made
    if done:
        model = settle(model, path, fresh=True)
    return model, done
