"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
2020): per layer, learn whether each weight rounds up or down so the layer's output on
calibration inputs stays close to FP32's, instead of rounding each weight to nearest.

For a layer ``y = W x`` with per-output-channel scales ``s``, the rounded weight is
``s · clip(floor(W / s) + h(V), -qmax, qmax)`` with the rectified sigmoid
``h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)`` (ζ = 1.1, γ = −0.1), V starting where h equals the
fractional part (nearest rounding's neighbourhood). The loss is the output error
``‖(W − W̃) X‖²`` over sampled input rows X, relative to nearest rounding's, plus
``λ · mean(1 − |2h − 1|^β)`` (λ = 10 against the relative error: tuned on a fixed case,
where it halves nearest rounding's error) with β annealed from 20 to 2 after a 20 % warm-up, which drives
every h to 0 or 1; the result is then rounded hard. Plain numpy with Adam: the loss is a
quadratic form, ``‖E X‖² = Σ_k e_k G e_kᵀ`` with ``G = XᵀX / N`` (or through X itself when rows
are fewer than the row length), per group for grouped convolutions, all groups at once.

The inputs are the FP32 model's (not the partly quantized model's), so one collection serves
every layer. A layer whose learned rounding does not beat nearest rounding on its own sample
keeps nearest rounding.
"""

from __future__ import annotations

from dataclasses import dataclass


import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..artifacts import write_atomic
from ..calib.ranges import Range
from ..model.plan import QuantPlan
from .qdq import BIAS_LIMIT
from .weights import FixedWeight, per_channel_scales

ZETA, GAMMA = 1.1, -0.1


@dataclass
class Result:
    q: np.ndarray  # int8 [groups, k, d]
    nearest_error: float  # ‖(W − W_nearest) X‖² / N (N rows)
    learned_error: float


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


class _Quadratic:
    """``E ↦ E·XᵀX/N`` for E [groups, k, d], through the Gram matrix or through X."""

    def __init__(self, x: np.ndarray):  # x [groups, N, d]
        self.n = x.shape[1]
        # k·d² per step through the Gram matrix, 2·k·d·N through X: the cheaper one
        self.gram = np.matmul(x.transpose(0, 2, 1), x) / self.n if x.shape[2] <= 2 * self.n else None
        self.x = None if self.gram is not None else x

    def apply(self, e: np.ndarray) -> np.ndarray:
        if self.gram is not None:
            return np.matmul(e, self.gram)
        return np.matmul(np.matmul(e, self.x.transpose(0, 2, 1)), self.x) / self.n

    def error(self, e: np.ndarray) -> float:
        return float(np.sum(self.apply(e) * e))


def learn_rounding(w: np.ndarray, x: np.ndarray, scales: np.ndarray, qmax: int = 127, iterations: int = 300,
                   reg: float = 10.0, lr: float = 0.03, warmup: float = 0.2, beta=(20.0, 2.0)) -> Result:
    """Learned int8 values for ``w`` [groups, k, d] (``scales`` [groups, k]) on input rows
    ``x`` [groups, N, d]."""
    w = np.asarray(w, np.float32)
    s = np.asarray(scales, np.float32)[..., None]
    quad = _Quadratic(np.asarray(x, np.float32))
    ws = w / s
    floor = np.floor(ws)
    nearest = np.clip(np.rint(ws), -qmax, qmax)
    e0 = quad.error(w - s * nearest)
    if e0 <= 0:
        return Result(nearest.astype(np.int8), 0.0, 0.0)
    rest = np.clip(ws - floor, 1e-4, 1 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
    m, m2 = np.zeros_like(v), np.zeros_like(v)
    start = int(warmup * iterations)
    for t in range(iterations):
        sig = _sigmoid(v)
        raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(raw, 0.0, 1.0)
        q = floor + h
        inside = (q > -qmax) & (q < qmax)
        grad_h = -2.0 * quad.apply(w - s * np.clip(q, -qmax, qmax)) * s * inside / e0
        if t >= start:
            b = beta[0] + (beta[1] - beta[0]) * (t - start) / max(1, iterations - start - 1)
            d = 2.0 * h - 1.0
            grad_h += reg / h.size * (-2.0 * b * np.abs(d) ** (b - 1.0) * np.sign(d))
        g = grad_h * sig * (1.0 - sig) * (ZETA - GAMMA) * ((raw > 0) & (raw < 1))
        m = 0.9 * m + 0.1 * g  # Adam
        m2 = 0.999 * m2 + 0.001 * g * g
        v -= lr * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (t + 1))) + 1e-8)
    learned = np.clip(floor + (np.clip(_sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1) >= 0.5), -qmax, qmax)
    e1 = quad.error(w - s * learned)
    best = learned if e1 < e0 else nearest
    return Result(best.astype(np.int8), e0, min(e0, e1))


def layer_form(w: np.ndarray, axis: int, groups: int, rows: np.ndarray):
    """(weights [groups, k, d], rows [groups, N, d]) of a Conv (axis 0, ``groups``) or a 2-D
    Gemm/MatMul weight whose output channels lie on ``axis``."""
    wm = np.moveaxis(np.asarray(w), axis, 0)
    k = wm.shape[0]
    wm = wm.reshape(groups, k // groups, -1)
    return wm, rows.reshape(len(rows), groups, -1).transpose(1, 0, 2)


def fixed_weight(w: np.ndarray, axis: int, groups: int, rows: np.ndarray, scales: np.ndarray, qmax: int,
                 iterations: int) -> tuple[FixedWeight, Result]:
    """Learned rounding of one layer's weight, as the Q/DQ writer takes it."""
    wm, xm = layer_form(w, axis, groups, rows)
    result = learn_rounding(wm, xm, np.asarray(scales, np.float32).reshape(wm.shape[:2]), qmax, iterations)
    moved = np.moveaxis(np.asarray(w), axis, 0).shape
    q = np.moveaxis(result.q.reshape(moved), 0, axis)
    return FixedWeight(q, np.asarray(scales, np.float32), axis), result


def learn_plan(model: onnx.ModelProto, plan: QuantPlan, rows: dict[str, np.ndarray], ranges: dict[str, Range],
               qmax: int = 127, method: str = "max", iterations: int = 300) -> tuple[dict[str, FixedWeight], dict]:
    """Learned rounding for every planned layer with sampled input ``rows`` (node → [N, d]);
    returns the fixed weights by weight name and the report's summary (layers, and the
    reconstruction error summed over them relative to nearest rounding)."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    fixed, before, after = {}, 0.0, 0.0
    for q in plan.nodes:
        x = rows.get(q.node)
        if x is None or not len(x) or q.weight not in inits:
            continue
        w = numpy_helper.to_array(inits[q.weight]).astype(np.float32)
        groups = int(next((helper.get_attribute_value(a) for a in nodes[q.node].attribute if a.name == "group"), 1))
        scales = per_channel_scales(w, q.axis, qmax, method)
        if q.bias and q.bias in inits and q.activation in ranges:
            # keep the int32 bias of the ONNX Runtime flavour representable (its activation scale >= amax / 255)
            bias = np.abs(numpy_helper.to_array(inits[q.bias]).astype(np.float64))
            floor = bias * 255 / (BIAS_LIMIT * max(ranges[q.activation].amax, 1e-30))
            if floor.shape == scales.shape:
                scales = np.maximum(scales, floor).astype(np.float32)
        fixed[q.weight], result = fixed_weight(w, q.axis, groups, x, scales, qmax, iterations)
        before, after = before + result.nearest_error, after + result.learned_error
    return fixed, {"layers": len(fixed), "iterations": iterations,
                   "error_vs_nearest": after / before if before else 1.0}


def save_fixed(path, fixed: dict[str, FixedWeight]) -> None:
    """``fixed`` as an .npz (``<weight>/q``, ``/scale``, ``/axis``), for ``trtq eval``."""
    arrays = {}
    for name in sorted(fixed):
        f = fixed[name]
        arrays.update({f"{name}/q": f.q, f"{name}/scale": f.scale, f"{name}/axis": np.array(f.axis)})
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def load_fixed(path) -> dict[str, FixedWeight]:
    with np.load(path) as z:
        names = {k.rsplit("/", 1)[0] for k in z.files}
        return {n: FixedWeight(z[f"{n}/q"], z[f"{n}/scale"], int(z[f"{n}/axis"])) for n in names}
