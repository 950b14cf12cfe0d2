"""Per-tensor streaming statistics: running min/max and an |x| histogram.

The histogram's bin width is always a power of two, ``2**exp``, the smallest for which the
largest |x| seen so far falls inside ``NBINS`` bins. When a later batch holds a larger value
the histogram is coarsened by merging neighbouring bins (``index >> shift``), which — because
the edges of a power-of-two grid nest — gives exactly the counts that binning everything at
the coarser width from the start would have given. Hence the statistics are:

* independent of batch size and sample order (the final width depends only on the global
  maximum, and counts are sums), and
* exactly mergeable: ``a.merge(b)`` equals the statistics of both halves' data together.

Methods that read TensorRT's view — |x| in 2048 equal bins over [0, max|x|] — cannot get it
exactly from the fine bins (its edges fall inside them), so they ask for an
:class:`ExactHistogram` (``needs = (EXACT_HISTOGRAM,)``): a second pass over the data once the
first has found the maximum. Its counts are sums too, so it keeps both properties.

Memory is ``NBINS`` int64 counts per tensor, whatever the number of samples. The folding itself
is the compiled single-pass kernel of :mod:`trtq.calib.kernels`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from . import kernels
from .kernels import EMPTY_EXP as _EMPTY_EXP
from .kernels import NBINS  # fine bins; methods needing TensorRT's 2048-bin view re-bin from these

_MAX_VALUES_PER_CALL = 1 << 30  # the kernel's per-call counts are int32
TRT_BINS = 2048  # EntropyCalibration2's histogram size over [0, max]
EXACT_HISTOGRAM = "exact_histogram"  # what a method lists in ``needs`` for an ExactHistogram


class ExactHistogram:
    """|x| in ``bins`` equal bins over [0, amax], amax fixed up front (the tensor's max |x| from
    a first pass), binned as ``numpy.histogram(|x|, bins, range=(0, amax))`` does. A value above
    amax means the data changed between passes: a :class:`DataError`. Same interface as
    :meth:`TensorStats.update`, so the collection loop folds either."""

    __slots__ = ("amax", "hist")

    def __init__(self, amax: float, bins: int = TRT_BINS) -> None:
        self.amax = float(amax)
        self.hist = np.zeros(bins, dtype=np.int64)

    def update(self, x: np.ndarray, stride: int = 1, name: str = "", block: int = 0) -> None:
        x = np.asarray(x)
        if x.size == 0 or self.amax <= 0:
            return
        if block and stride > 1:  # the stride subsample is defined on NCHW positions
            n, c = x.shape[:2]
            x = x.reshape(n, c // block, -1, block).transpose(0, 1, 3, 2)
        x2 = x.reshape(len(x), -1)
        x2 = np.ascontiguousarray(x2 if stride == 1 else x2[:, ::stride], dtype=np.float32)
        edges = np.linspace(0.0, self.amax, len(self.hist) + 1)
        if kernels.bin_exact(x2, edges, self.hist):
            raise DataError(f"tensor {name or '?'}: the second calibration pass saw values beyond the first "
                            f"pass's max |x| {self.amax:g}; the data (or loader) must give the same samples each pass")

    def merge(self, other: "ExactHistogram") -> "ExactHistogram":
        if self.amax != other.amax or len(self.hist) != len(other.hist):
            raise ValueError(f"exact histograms over [0, {self.amax}] and [0, {other.amax}] do not merge")
        out = ExactHistogram(self.amax, len(self.hist))
        out.hist = self.hist + other.hist
        return out

    def copy(self) -> "ExactHistogram":
        out = ExactHistogram(self.amax, len(self.hist))
        out.hist = self.hist.copy()
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, ExactHistogram) and self.amax == other.amax and np.array_equal(self.hist, other.hist)


class TensorStats:
    """Running statistics of one tensor."""

    __slots__ = ("count", "min", "max", "exp", "hist", "channel_sum", "channel_axis", "samples", "exact")

    def __init__(self, channel_axis: int | None = None) -> None:
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.exp = _EMPTY_EXP
        self.hist = np.zeros(NBINS, dtype=np.int64)
        # per-channel sums (float64) on ``channel_axis`` of each sample, for bias correction;
        # added sample by sample, in order, so they too do not depend on the batch size
        self.channel_axis = channel_axis
        self.channel_sum: np.ndarray | None = None
        self.samples = 0
        self.exact: ExactHistogram | None = None  # TensorRT's view, from a second pass (``attach_exact``)

    def exact_histogram(self) -> ExactHistogram | None:
        """The exact 2048-bin histogram over [0, absmax], if collected for these statistics."""
        if self.exact is None or self.exact.amax != self.absmax or self.exact.hist.sum() != self.hist.sum():
            return None
        return self.exact

    def attach_exact(self, exact: ExactHistogram, name: str = "") -> None:
        """Keep ``exact`` (collected over the same data); a count that differs means the data changed."""
        if exact.amax != self.absmax or exact.hist.sum() != self.hist.sum():
            raise DataError(f"tensor {name or '?'}: the second calibration pass saw {int(exact.hist.sum())} values, "
                            f"the first {int(self.hist.sum())}; the data (or loader) must give the same samples "
                            "each pass")
        self.exact = exact

    def channel_mean(self) -> np.ndarray | None:
        """Mean of each channel over every sample and position (None if not collected)."""
        if self.channel_sum is None or self.samples == 0:
            return None
        per_sample = self.count // self.samples // len(self.channel_sum)
        return self.channel_sum / (self.samples * per_sample)

    @property
    def absmax(self) -> float:
        return 0.0 if self.count == 0 else max(abs(self.min), abs(self.max))

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exp)

    def _coarsen_to(self, exp: int) -> None:
        if exp <= self.exp:
            return
        shift = exp - self.exp
        nz = np.flatnonzero(self.hist)
        self.hist = np.bincount(nz >> shift if shift < 63 else np.zeros_like(nz), weights=self.hist[nz],
                                minlength=NBINS).astype(np.int64)
        self.exp = exp

    def update(self, x: np.ndarray, stride: int = 1, name: str = "", block: int = 0) -> None:
        """Fold a batch (first axis = samples) in. ``stride`` > 1 histograms every stride-th
        element of each sample (min/max/count and channel sums stay exact): cheaper, and still
        independent of batch size and order because the subsample is fixed per sample.
        ``block`` > 0: ``x`` (N, C, H, W) holds its values in ONNX Runtime's channel-blocked
        NCHWc memory order with that block size (channel axis 1); the statistics are identical
        to folding the same tensor in NCHW order.
        A NaN or inf is a :class:`DataError` naming ``name``."""
        x = np.asarray(x)
        if x.size == 0:
            return
        self.exact = None  # new values: an exact histogram no longer describes the data
        if block:
            self._update_blocked(x, block, stride, name)
            return
        axis = None if self.channel_axis is None or x.ndim < 2 else self.channel_axis % x.ndim
        x = np.ascontiguousarray(x.reshape(len(x), -1) if x.ndim < 2 else x, dtype=np.float32)
        n = len(x)  # (float16/float64 activations are folded as float32)
        if axis is not None and axis > 0:
            shape = (n, int(np.prod(x.shape[1:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1:])))
            sums = self._sums(x.shape[axis], n)
        else:
            shape = (n, 1, 1, x.size // n)
            sums = np.zeros(0, dtype=np.float64)
        x4 = x.reshape(shape)
        self._fold(lambda part: kernels.fold(part, stride, self.hist.reshape(1, -1), self.exp, sums), x4, name)

    def _update_blocked(self, x: np.ndarray, block: int, stride: int, name: str) -> None:
        if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous or x.shape[1] % block:
            raise ValueError(f"tensor {name}: NCHWc data must be contiguous float32 (N, C, H, W) with C a "
                             f"multiple of {block}, not {x.dtype} {x.shape}")
        if self.channel_axis not in (None, 1, -3):
            raise ValueError(f"tensor {name}: NCHWc data has its channels on axis 1, not {self.channel_axis}")
        n, c = x.shape[:2]
        sums = np.zeros(0, dtype=np.float64) if self.channel_axis is None else self._sums(c, n)
        x4 = x.reshape(n, c // block, x.shape[2] * x.shape[3], block)
        self._fold(lambda part: kernels.fold_blocked(part, stride, self.hist.reshape(1, -1), self.exp, sums), x4, name)

    def _sums(self, channels: int, samples: int) -> np.ndarray:
        if self.channel_sum is None:
            self.channel_sum = np.zeros(channels, dtype=np.float64)
        self.samples += samples
        return self.channel_sum

    def _fold(self, kernel, x4: np.ndarray, name: str) -> None:
        """Run ``kernel`` over ``x4`` a few samples at a time (its per-call counts are int32)."""
        n = len(x4)
        step = max(1, _MAX_VALUES_PER_CALL // max(1, x4.size // n))
        for first in range(0, n, step):
            lo, hi, self.exp, bad = kernel(x4[first:first + step])
            if bad:
                raise DataError(f"tensor {name or '?'} has NaN or infinite values in the calibration data; "
                                       "check the preprocessing and the model on these inputs")
            self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x4.size

    def merge(self, other: "TensorStats") -> "TensorStats":
        """Exact for counts, min/max and histogram; channel sums add (equal to the whole's to
        within float64 rounding)."""
        out = TensorStats(self.channel_axis if self.channel_axis is not None else other.channel_axis)
        if self.channel_sum is not None or other.channel_sum is not None:
            parts = [p.channel_sum for p in (self, other) if p.channel_sum is not None]
            out.channel_sum = parts[0].copy() if len(parts) == 1 else parts[0] + parts[1]
        out.samples = self.samples + other.samples
        out.count = self.count + other.count
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        a, b = self.copy(), other.copy()
        exp = max(a.exp, b.exp)
        a._coarsen_to(exp)
        b._coarsen_to(exp)
        out.exp, out.hist = exp, a.hist + b.hist
        if self.exact is not None and other.exact is not None and self.exact.amax == other.exact.amax == out.absmax:
            out.exact = self.exact.merge(other.exact)
        return out

    def copy(self) -> "TensorStats":
        out = TensorStats(self.channel_axis)
        out.count, out.min, out.max, out.exp, out.hist = self.count, self.min, self.max, self.exp, self.hist.copy()
        out.channel_sum = None if self.channel_sum is None else self.channel_sum.copy()
        out.samples = self.samples
        out.exact = None if self.exact is None else self.exact.copy()
        return out

    def __eq__(self, other) -> bool:
        if not (isinstance(other, TensorStats) and self.count == other.count and self.min == other.min
                and self.max == other.max and self.exp == other.exp and np.array_equal(self.hist, other.hist)
                and self.samples == other.samples and (self.channel_sum is None) == (other.channel_sum is None)
                and self.exact == other.exact):
            return False
        return self.channel_sum is None or np.allclose(self.channel_sum, other.channel_sum, rtol=1e-12, atol=1e-9)

    # -- persistence (an .npz per calibration run) -------------------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/meta": np.array([self.count, self.exp, self.samples,
                                           -999 if self.channel_axis is None else self.channel_axis], dtype=np.int64),
               f"{prefix}/range": np.array([self.min, self.max], dtype=np.float64),
               f"{prefix}/hist": self.hist}
        if self.channel_sum is not None:
            out[f"{prefix}/channels"] = self.channel_sum
        if self.exact is not None:
            out[f"{prefix}/exact"] = self.exact.hist
            out[f"{prefix}/exact_amax"] = np.array(self.exact.amax, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "TensorStats":
        count, exp, samples, axis = (int(v) for v in arrays[f"{prefix}/meta"])
        out = cls(None if axis == -999 else axis)
        out.count, out.exp, out.samples = count, exp, samples
        out.min, out.max = (float(v) for v in arrays[f"{prefix}/range"])
        out.hist = np.asarray(arrays[f"{prefix}/hist"], dtype=np.int64)
        names = getattr(arrays, "files", arrays)
        key = f"{prefix}/channels"
        out.channel_sum = np.asarray(arrays[key], dtype=np.float64) if key in names else None
        if f"{prefix}/exact" in names:
            out.exact = ExactHistogram(float(arrays[f"{prefix}/exact_amax"]))
            out.exact.hist = np.asarray(arrays[f"{prefix}/exact"], dtype=np.int64)
        return out


def merge_all(parts: list[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Merge per-tensor statistics of several shards (e.g. processes) of one data set."""
    out: dict[str, TensorStats] = {}
    for part in parts:
        for name, st in part.items():
            out[name] = out[name].merge(st) if name in out else st.copy()
    return out
