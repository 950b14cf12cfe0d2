"""What differs between the two Q/DQ flavours, in one place: a :class:`Policy` each.

* ``tensorrt`` — symmetric int8 activations (zero point 0), int8 weights, FP32 bias; on a
  residual Add only the skip input is quantized (TensorRT fuses Conv+Add, and Q/DQ between
  them would break that).
* ``onnxruntime`` — affine uint8 activations (scale and zero point from the calibrated
  [min, max]), int8 weights, int32 bias, and, where the plan has it, its own placement
  (:mod:`trtq.model.placement`: outputs of weighted ops and the ops with INT8 kernels, so ONNX
  Runtime forms QLinearConv / QLinearMatMul / QLinearAdd …); without one, both inputs of a
  residual Add quantized.

Pooling inputs are quantized in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from ..calib.ranges import Range
from ..model.plan import QuantPlan

Flavor = Literal["tensorrt", "onnxruntime"]


@dataclass(frozen=True)
class Policy:
    name: str
    symmetric: bool  # int8 activations, zero point 0 (else uint8 affine)
    quantize_add_main: bool  # Q/DQ on a residual Add's branch input too, not only on its skip input
    int32_bias: bool  # bias stored int32 behind a DQ at scale s_x · s_w (else kept FP32)
    own_placement: bool = False  # use the plan's ONNX Runtime placement (QuantPlan.ort) where it has one

    def activation_qparams(self, rng: Range) -> tuple[float, int, int]:
        """(scale, zero point, ONNX dtype) of an activation."""
        if self.symmetric:
            return rng.scale, 0, onnx.TensorProto.INT8
        lo, hi = min(rng.min, 0.0), max(rng.max, 0.0)
        if hi - lo <= 0:
            return 1.0 / 255.0, 0, onnx.TensorProto.UINT8
        scale = (hi - lo) / 255.0
        zp = int(np.clip(round(-lo / scale), 0, 255))
        return scale, zp, onnx.TensorProto.UINT8

    def add_inputs(self, plan: QuantPlan) -> dict[str, set[str]]:
        """Node → the inputs (other than a weighted op's) that get a Q/DQ pair: residual Adds and
        pooling, or every reader the plan's ONNX Runtime placement names."""
        if self.own_placement and plan.ort is not None:
            return {node: set(inputs) for node, inputs in plan.ort.readers.items()}
        out = {a.node: ({a.skip, a.main} if self.quantize_add_main else {a.skip}) for a in plan.adds}
        out.update({node: {t} for node, t in plan.pools})
        return out

    def weighted(self, plan: QuantPlan) -> list:
        """The plan's weighted ops this flavour quantizes (the ONNX Runtime placement keeps those
        ORT would run in FP32 anyway wholly float)."""
        if self.own_placement and plan.ort is not None and plan.ort.float_weighted:
            keep = set(plan.ort.float_weighted)
            return [q for q in plan.nodes if q.node not in keep]
        return plan.nodes

    def tensors(self, plan: QuantPlan) -> list[str]:
        """The tensors this flavour quantizes that need a calibrated range of their own."""
        if self.own_placement and plan.ort is not None:
            return list(dict.fromkeys(plan.activations + plan.ort.calibrated))
        return plan.activations

    def ranges(self, plan: QuantPlan, ranges: dict[str, Range]) -> dict[str, Range]:
        """``ranges`` narrowed to where the tensor's readers still change their output
        (``OrtPlacement.saturates``), and the input and output of each same-scale op (Reshape,
        MaxPool, Resize…) given the union of their ranges."""
        if not (self.own_placement and plan.ort is not None):
            return ranges
        out = dict(ranges)
        for t, (lo, hi) in plan.ort.saturates.items():
            r = out[t]
            if max(r.min, lo) < min(r.max, hi):
                low, high = max(r.min, lo), min(r.max, hi)
                out[t] = Range(max(abs(low), abs(high)), low, high)
        groups: dict[str, list[str]] = {}
        for t, src in plan.ort.shared.items():
            groups.setdefault(src, [src]).append(t)
        for members in groups.values():
            lo, hi = min(out[t].min for t in members), max(out[t].max for t in members)
            union = Range(max(abs(lo), abs(hi)), lo, hi)
            out.update({t: union for t in members})
        return out


TENSORRT = Policy("tensorrt", symmetric=True, quantize_add_main=False, int32_bias=False)
ONNXRUNTIME = Policy("onnxruntime", symmetric=False, quantize_add_main=True, int32_bias=True, own_placement=True)
POLICIES = {p.name: p for p in (TENSORRT, ONNXRUNTIME)}


def policy(flavor: Flavor | Policy) -> Policy:
    return flavor if isinstance(flavor, Policy) else POLICIES[flavor]
