"""Per-tensor streaming statistics: running min/max and an |x| histogram.

The histogram's bin width is always a power of two, ``2**exp``, the smallest for which the
largest |x| seen so far falls inside ``NBINS`` bins. When a later batch holds a larger value
the histogram is coarsened by merging neighbouring bins (``index >> shift``), which — because
the edges of a power-of-two grid nest — gives exactly the counts that binning everything at
the coarser width from the start would have given. Hence the statistics are:

* independent of batch size and sample order (the final width depends only on the global
  maximum, and counts are sums), and
* exactly mergeable: ``a.merge(b)`` equals the statistics of both halves' data together.

Memory is ``NBINS`` int64 counts per tensor, whatever the number of samples.
"""

from __future__ import annotations

import math

import numpy as np

NBINS = 16384  # fine bins; methods needing TensorRT's 2048-bin view re-bin from these
_LOG2_NBINS = 14
_EMPTY_EXP = -160  # width exponent of a histogram that has seen only zeros


def _exp_for(amax: float) -> int:
    """Smallest exponent e with ``amax / 2**e < NBINS``."""
    if amax <= 0.0:
        return _EMPTY_EXP
    _, k = math.frexp(amax)  # amax = f * 2**k, 0.5 <= f < 1
    return max(k - _LOG2_NBINS, _EMPTY_EXP)


class TensorStats:
    """Running statistics of one tensor."""

    __slots__ = ("count", "min", "max", "exp", "hist")

    def __init__(self) -> None:
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.exp = _EMPTY_EXP
        self.hist = np.zeros(NBINS, dtype=np.int64)

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

    def update(self, x: np.ndarray, stride: int = 1) -> None:
        """Fold a batch (first axis = samples) in. ``stride`` > 1 histograms every stride-th
        element of each sample (min/max/count stay exact): cheaper, and still independent of
        batch size and order because the subsample is fixed per sample."""
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        if stride > 1:
            x = x.reshape(len(x), -1)[:, ::stride]
        self._coarsen_to(_exp_for(max(abs(lo), abs(hi), self.absmax)))
        if self.exp == _EMPTY_EXP:  # only zeros so far
            self.hist[0] += x.size
            return
        wide = x.dtype == np.float64 or self.exp < -100  # 2**-exp must not overflow float32
        a = np.abs(x, dtype=np.float64 if wide else np.float32)
        a *= a.dtype.type(math.ldexp(1.0, -self.exp))  # exact: multiply by a power of two
        idx = a.astype(np.intp).ravel()  # bincount's own index type: no second conversion
        self.hist += np.bincount(idx, minlength=NBINS)

    def merge(self, other: "TensorStats") -> "TensorStats":
        out = TensorStats()
        out.count = self.count + other.count
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        a, b = self.copy(), other.copy()
        exp = max(a.exp, b.exp)
        a._coarsen_to(exp)
        b._coarsen_to(exp)
        out.exp, out.hist = exp, a.hist + b.hist
        return out

    def copy(self) -> "TensorStats":
        out = TensorStats()
        out.count, out.min, out.max, out.exp, out.hist = self.count, self.min, self.max, self.exp, self.hist.copy()
        return out

    def __eq__(self, other) -> bool:
        return (isinstance(other, TensorStats) and self.count == other.count and self.min == other.min
                and self.max == other.max and self.exp == other.exp and np.array_equal(self.hist, other.hist))

    # -- persistence (an .npz per calibration run) -------------------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/meta": np.array([self.count, self.exp], dtype=np.int64),
                f"{prefix}/range": np.array([self.min, self.max], dtype=np.float64),
                f"{prefix}/hist": self.hist}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "TensorStats":
        out = cls()
        out.count, out.exp = (int(v) for v in arrays[f"{prefix}/meta"])
        out.min, out.max = (float(v) for v in arrays[f"{prefix}/range"])
        out.hist = np.asarray(arrays[f"{prefix}/hist"], dtype=np.int64)
        return out


def merge_all(parts: list[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Merge per-tensor statistics of several shards (e.g. processes) of one data set."""
    out: dict[str, TensorStats] = {}
    for part in parts:
        for name, st in part.items():
            out[name] = out[name].merge(st) if name in out else st.copy()
    return out
