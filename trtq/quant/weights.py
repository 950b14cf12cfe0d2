"""Per-channel symmetric weight quantization on the axis TensorRT documents for each op."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..calib.ranges import safe_amax_array

QMAX_BY_BITS = {7: 64, 8: 127}  # symmetric weight range per bit width (7: no u8×s8 int16 saturation)


@dataclass(frozen=True)
class FixedWeight:
    """Integer weights decided before Q/DQ insertion (a pre-quantized model's, or learned
    rounding's): written as they are instead of computing scales and rounding."""

    q: np.ndarray  # int8 values, the weight's shape
    scale: np.ndarray  # float32, one per channel along ``axis``, or shape () for one per tensor
    axis: int

    def dequantized(self) -> np.ndarray:
        return dequantize_weights(self.q, self.scale, self.axis)


def per_channel_amax(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but ``axis``."""
    w = np.asarray(w, dtype=np.float64)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=reduce) if reduce else np.abs(w)


def per_channel_amax_mse(w: np.ndarray, axis: int, qmax: int = 127, steps: int = 51) -> np.ndarray:
    """Per channel, the clip ``f · max|w_c|`` (f from 0.5 to 1 in ``steps``) that minimises the
    squared error of quantize→dequantize over the channel's weights."""
    wc = np.moveaxis(np.asarray(w, dtype=np.float32), axis, 0).reshape(w.shape[axis], -1)
    amax = safe_amax_array(np.abs(wc).max(axis=1)).astype(np.float32)
    best, best_err = amax.copy(), np.full(len(amax), np.inf)
    for f in np.linspace(0.5, 1.0, steps, dtype=np.float32):
        s = (f * amax / qmax)[:, None]
        err = ((np.clip(np.rint(wc / s), -qmax, qmax) * s - wc) ** 2).sum(axis=1)
        better = err < best_err  # strict: on ties the larger clip (found later) does not replace
        best = np.where(better | ((err == best_err) & (f == 1.0)), f * amax, best)
        best_err = np.minimum(err, best_err)
    return best.astype(np.float64)


def per_channel_scales(w: np.ndarray, axis: int, qmax: int = 127, method: str = "max") -> np.ndarray:
    """Symmetric scales ``amax_c / qmax`` as float32, with ``amax_c`` = max|w_c| (``max``) or the
    MSE-optimal clip (``mse``); an all-zero channel gets ``1 / qmax``."""
    amax = per_channel_amax(w, axis) if method == "max" else per_channel_amax_mse(w, axis, qmax)
    return (safe_amax_array(amax) / qmax).astype(np.float32)


def _bshape(scales: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scales.reshape(shape)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int, qmax: int = 127) -> np.ndarray:
    """int8 values ``clip(round_half_even(w / scale), -qmax, qmax)``, as ONNX QuantizeLinear rounds."""
    s = _bshape(scales.astype(np.float32), w.ndim, axis)
    q = np.rint(np.asarray(w, dtype=np.float32) / s)
    return np.clip(q, -qmax, qmax).astype(np.int8)


def dequantize_weights(q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    return q.astype(np.float32) * _bshape(scales.astype(np.float32), q.ndim, axis)


def bias_shift(op_type: str, group: int, w: np.ndarray, w_deq: np.ndarray, input_mean: np.ndarray,
               trans_b: int = 0) -> np.ndarray | None:
    """Expected change of each output channel caused by quantizing the weights alone,
    ``(W_q − W) · E[x]`` (Nagel et al., "Data-Free Quantization", 2019, empirical form): subtract it
    from the bias and the layer's output mean is unbiased again. Conv takes the input mean per
    channel as spatially constant (padding ignored); returns None where the op has no rule."""
    err = w_deq.astype(np.float64) - w.astype(np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    if op_type == "Conv" and err.ndim >= 3:
        e = err.reshape(err.shape[0], err.shape[1], -1).sum(axis=2)  # [K, C/g]
        k, cg = e.shape
        if group < 1 or k % group or mean.shape[0] != cg * group:
            return None
        return np.einsum("gkc,gc->gk", e.reshape(group, k // group, cg), mean.reshape(group, cg)).reshape(k)
    if op_type == "Gemm" and err.ndim == 2:
        e = err if trans_b else err.T  # [N, K]
        return e @ mean if e.shape[1] == mean.shape[0] else None
    return None
