"""A bounded sample of each weighted op's input rows on calibration data, for learned rounding
(:mod:`trtq.quant.adaround`): the vectors the weight multiplies — a Conv's receptive-field
patches ``[C · kh · kw]`` at sampled output positions, a Gemm's or MatMul's input rows.

Memory is ``rows × row length`` per layer whatever the data: each sample contributes
``ceil(rows / samples)`` rows at positions drawn from a generator seeded by the sample's index,
so the rows do not depend on the batch size. The pass is the calibration's machinery
(:func:`trtq.calib.shards.collect_range`) with these samplers as the folders.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ..job import DataSpec
from ..model.plan import QuantNode
from ..model.prepare import PreparedModel
from ..progress import Progress
from . import shards
from .collect import group_tensors


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class LayerRows:
    """Rows of one layer's input. ``geometry``: ("conv", kernel, strides, dilations, pads) or ("rows",)."""

    def __init__(self, geometry: tuple, rows: int, per_sample: int, seed: int):
        self.geometry, self.rows, self.per_sample, self.seed = geometry, rows, per_sample, seed
        self.parts: list[np.ndarray] = []
        self.seen = 0  # samples so far (a sample's index seeds its positions)
        self.kept = 0

    def add(self, x: np.ndarray) -> None:
        for sample in x:
            if self.kept < self.rows:
                rng = np.random.default_rng([self.seed, self.seen])
                part = self._conv(sample, rng) if self.geometry[0] == "conv" else self._rows(sample, rng)
                part = part[:self.rows - self.kept]
                self.parts.append(np.ascontiguousarray(part, dtype=np.float32))
                self.kept += len(part)
            self.seen += 1

    def _rows(self, sample: np.ndarray, rng) -> np.ndarray:
        flat = sample.reshape(-1, sample.shape[-1])
        return flat[np.sort(rng.choice(len(flat), min(self.per_sample, len(flat)), replace=False))]

    def _conv(self, sample: np.ndarray, rng) -> np.ndarray:
        _, (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.geometry
        xp = np.pad(sample, ((0, 0), (pt, pb), (pl, pr)))
        oh = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
        ow = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
        pos = np.sort(rng.choice(oh * ow, min(self.per_sample, oh * ow), replace=False))
        hh = (pos // ow)[:, None] * sh + np.arange(kh) * dh  # [r, kh]
        ww = (pos % ow)[:, None] * sw + np.arange(kw) * dw  # [r, kw]
        patches = xp[:, hh[:, :, None], ww[:, None, :]]  # [C, r, kh, kw]
        return patches.transpose(1, 0, 2, 3).reshape(len(pos), -1)

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.float32)


class TensorRows:
    """The samplers of every layer reading one tensor, with the collection's folder interface."""

    def __init__(self, layers: dict[str, LayerRows]):
        self.layers = layers

    def update(self, x: np.ndarray, stride: int = 1, name: str = "", block: int = 0) -> None:
        for layer in self.layers.values():
            layer.add(np.asarray(x))


def geometry(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> tuple | None:
    """How ``node`` reads its input rows, or None where learned rounding does not apply."""
    a = _attrs(node)
    if node.op_type == "Conv" and len(weight_shape) == 4 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        return ("conv", tuple(weight_shape[2:]), tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1])),
                (pads[0], pads[1], pads[2], pads[3]))
    if node.op_type == "Gemm" and not a.get("transA", 0) and len(weight_shape) == 2:
        return ("rows",)
    if node.op_type == "MatMul" and len(weight_shape) == 2:
        return ("rows",)
    return None


def collect_rows(prepared: PreparedModel, spec: DataSpec, layers: list[QuantNode], rows: int, samples: int = 32,
                 progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Node name → ``[rows, row length]`` float32 input rows, from the first ``samples`` calibration samples."""
    progress = progress or Progress()
    nodes = {n.name: n for n in prepared.model.graph.node}
    shapes = {i.name: tuple(i.dims) for i in prepared.model.graph.initializer}
    spec = spec.model_copy(update={"max_samples": min(spec.max_samples or samples, samples)})
    per_sample = math.ceil(rows / spec.max_samples)
    by_tensor: dict[str, dict[str, LayerRows]] = {}
    for i, q in enumerate(layers):
        geo = geometry(nodes[q.node], shapes[q.weight])
        if geo is not None:
            by_tensor.setdefault(q.activation, {})[q.node] = LayerRows(geo, rows, per_sample, i)
    order = [q.activation for q in layers if q.activation in by_tensor]
    tensors = list(dict.fromkeys(order))
    groups = group_tensors(prepared.model, tensors, spec.batch_size, spec.memory_budget_mb << 20)
    folders, _, _ = shards.collect_range(prepared.model, groups, {}, spec, prepared.inputs, spec.skip,
                                         spec.max_samples, None, progress, native=False,
                                         make=lambda t: TensorRows(by_tensor[t]), label="adaround inputs")
    return {name: layer.matrix() for f in folders.values() for name, layer in f.layers.items()}
