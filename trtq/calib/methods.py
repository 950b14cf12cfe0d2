"""Calibration methods: statistics of one tensor → its amax (the symmetric range ±amax).

Each method is a small class with one job, ``compute_amax(stats)``; methods never see raw
activations, so every method can be derived from one collection (and re-derived later from
stored statistics). A method that needs more than the first pass's statistics names it in
``needs`` (entropy: ``EXACT_HISTOGRAM``, TensorRT's 2048-bin view binned exactly in a second
pass); :func:`needs` is the union the collection has to provide. A user calibrator is any class
with ``compute_amax``.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..errors import JobError
from ..job import CalibratorSpec
from ..plugins import import_callable
from .ranges import Range
from .stats import EXACT_HISTOGRAM, TRT_BINS, TensorStats


def needs(*methods) -> set[str]:
    """What the collection must provide besides the first pass's statistics for ``methods``."""
    return {n for m in methods for n in getattr(m, "needs", ())}


def rebin(stats: TensorStats, nbins: int = TRT_BINS) -> tuple[np.ndarray, float]:
    """The |x| histogram as ``nbins`` equal bins over [0, absmax], interpolated (MSE's view).

    Counts of the fine power-of-two bins are split in proportion to overlap (values taken as
    uniform within a fine bin), so each coarse bin is exact to within one fine bin — a quarter
    to an eighth of a coarse bin. Returns (float64 counts, coarse bin width)."""
    amax = stats.absmax
    if amax == 0 or stats.hist.sum() == 0:
        return np.zeros(nbins), 0.0
    cum = np.concatenate([[0.0], np.cumsum(stats.hist, dtype=np.float64)])
    fine_edges = np.arange(len(cum), dtype=np.float64) * stats.bin_width
    width = amax / nbins
    coarse = np.interp(np.arange(nbins + 1, dtype=np.float64) * width, fine_edges, cum)
    coarse[-1] = cum[-1]  # every count lies at or below absmax
    return np.diff(coarse), width


class MinMax:
    """TensorRT MinMaxCalibrator semantics: the largest |x| observed."""

    name = "minmax"

    def compute_amax(self, stats: TensorStats) -> float:
        return stats.absmax

    def describe(self) -> dict:
        return {"method": self.name}


class Percentile:
    """The |x| below which ``percentile`` % of the values fall (upper edge of that histogram bin,
    never above the observed maximum)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99):
        if not 0 < percentile <= 100:
            raise ValueError("percentile must be in (0, 100]")
        self.percentile = percentile

    def compute_amax(self, stats: TensorStats) -> float:
        total = int(stats.hist.sum())
        if total == 0:
            return 0.0
        if self.percentile >= 100:
            return stats.absmax
        cdf = np.cumsum(stats.hist)
        idx = int(np.searchsorted(cdf, self.percentile / 100.0 * total, side="left"))
        return min((idx + 1) * stats.bin_width, stats.absmax)

    def describe(self) -> dict:
        return {"method": self.name, "percentile": self.percentile}


class Entropy:
    """TensorRT's EntropyCalibration2 (KL divergence), as NVIDIA describes it:

    2048 bins of |x| over [0, max]; for each candidate ``i`` from 128 to 2048, the reference
    ``P`` is ``hist[:i]`` with the outlier mass ``sum(hist[i:])`` added to its last bin; ``Q``
    merges ``hist[:i]`` into 128 levels and spreads each level evenly over the bins of that
    level that were non-zero; the ``i`` with the smallest KL(P‖Q) (the last one on ties) gives
    amax = ``i`` bin widths. ``hist[0]`` is set to ``hist[1]`` first to damp the zero bin.

    The 2048 bins are the exact ones (:class:`~trtq.calib.stats.ExactHistogram`, a second pass):
    re-binning the fine histogram moves isolated tail counts and with them the non-zero masks
    the search depends on (−21 % on Laplace data with a few outliers).
    """

    name = "entropy"
    needs = (EXACT_HISTOGRAM,)

    def __init__(self, start_bin: int = 128, levels: int = 128):
        self.start_bin, self.levels = start_bin, levels

    def compute_amax(self, stats: TensorStats) -> float:
        if stats.absmax == 0:
            return 0.0
        exact = stats.exact_histogram()
        if exact is None:
            raise ValueError("entropy needs the exact 2048-bin histogram of these statistics (a second pass: "
                             "calib.calibrate provides it for methods listing EXACT_HISTOGRAM in 'needs')")
        return kl_threshold(exact.hist, self.start_bin, self.levels) * (exact.amax / len(exact.hist))

    def describe(self) -> dict:
        return {"method": self.name, "bins": TRT_BINS, "start_bin": self.start_bin, "levels": self.levels}


def kl_threshold(hist: np.ndarray, start_bin: int = 128, levels: int = 128) -> int:
    """The bin count ``i`` (amax = i × bin width) EntropyCalibration2 picks for ``hist``.

    All candidates at once. With T = Σp (the same for every i) and, per level k, L_k the
    count and N_k the number of non-zero bins, Q is L_k/N_k on those bins, so
        Σ p·log q = Σ_k L_k·log(L_k/N_k) + tail_i·log q_{i-1}
        KL(P‖Q)   = (Σ p·log p − Σ p·log q) / T − log T + log Σq,   Σq = T − tail_i,
    and every term is a difference of prefix sums: O(levels) per candidate, not O(i)."""
    h = np.asarray(hist, dtype=np.float64).copy()
    n = len(h)
    if n > 1:
        h[0] = h[1]
    total = h.sum()
    if n < start_bin or total == 0:
        return n
    csum = np.concatenate([[0.0], np.cumsum(h)])
    cnz = np.concatenate([[0.0], np.cumsum(h != 0)])
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    chl = np.concatenate([[0.0], np.cumsum(hlogh)])
    return int(_kl_best(h, csum, cnz, chl, float(total), start_bin, levels))


@nb.njit(cache=True, nogil=True)
def _kl_best(h, csum, cnz, chl, total, start_bin, levels):
    n = len(h)
    best, best_kl = n, np.inf
    log_total = math.log(total)
    for i in range(start_bin, n + 1):
        tail = total - csum[i]
        plogq = 0.0
        L = 0.0
        N = 0.0
        for k in range(levels):
            a = (k * i + levels - 1) // levels  # first bin of level k
            b = ((k + 1) * i + levels - 1) // levels
            L = csum[b] - csum[a]
            N = cnz[b] - cnz[a]
            if L > 0 and N > 0:
                plogq += L * math.log(L / N)
        last = h[i - 1]
        q_total = total - tail
        if (tail > 0 and last == 0) or q_total <= 0:
            continue  # outliers land on an empty bin (Q is 0 there), or nothing is left in Q
        if tail > 0:  # L, N: the last level, which holds bin i-1
            plogq += tail * math.log(L / N)
        p_last = last + tail
        plogp = chl[i - 1] + (p_last * math.log(p_last) if p_last > 0 else 0.0)
        kl = (plogp - plogq) / total - log_total + math.log(q_total)
        if kl <= best_kl:  # the last minimum, as in NVIDIA's reference
            best, best_kl = i, kl
    return best


class MSE:
    """The amax minimising the mean-squared error of int8 quantize→dequantize of |x|,
    searched over the upper edges of the 2048-bin histogram from bin 128 up (values taken at
    their bin centres)."""

    name = "mse"

    def __init__(self, start_bin: int = 128, qmax: int = 127):
        self.start_bin, self.qmax = start_bin, qmax

    def compute_amax(self, stats: TensorStats) -> float:
        hist, width = rebin(stats)
        if width == 0:
            return 0.0
        return mse_threshold(hist, self.start_bin, self.qmax) * width

    def describe(self) -> dict:
        return {"method": self.name, "start_bin": self.start_bin}


def mse_threshold(hist: np.ndarray, start_bin: int = 128, qmax: int = 127) -> int:
    """The bin count ``i`` (amax = i bin widths) with the least quantization error for ``hist``.

    In units of one bin: bin b holds n_b values at c_b = b + ½. For candidate i the step is
    s = i/qmax; bin b < i rounds to level j when (2j−1)·i ≤ (2b+1)·qmax < (2j+1)·i (exact
    integers; at a tie both levels are equally far), and bins from i on clip to i. The error of
    bins [lo, hi) at level value v is Σn·c² − 2v·Σn·c + v²·Σn, from three prefix sums: O(qmax)
    per candidate, not O(bins). The first candidate with the least error wins."""
    n = np.asarray(hist, dtype=np.float64)
    if len(n) < start_bin or n.sum() == 0:
        return len(n)
    c = np.arange(len(n), dtype=np.float64) + 0.5
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(n * c ** k)]) for k in (0, 1, 2))
    return int(_mse_best(s0, s1, s2, start_bin, qmax))


@nb.njit(cache=True, nogil=True)
def _mse_best(s0, s1, s2, start_bin, qmax):
    nbins = len(s0) - 1
    best, best_err = nbins, np.inf
    for i in range(start_bin, nbins + 1):
        step = i / qmax
        err = 0.0
        lo = 0
        for j in range(qmax + 1):
            # first bin of level j + 1: ceil(((2j+1)·i − qmax) / 2qmax), within [lo, i]
            hi = min(max(-((qmax - (2 * j + 1) * i) // (2 * qmax)), lo), i)
            v = j * step
            err += (s2[hi] - s2[lo]) - 2.0 * v * (s1[hi] - s1[lo]) + v * v * (s0[hi] - s0[lo])
            lo = hi
        a = float(i)
        err += (s2[nbins] - s2[i]) - 2.0 * a * (s1[nbins] - s1[i]) + a * a * (s0[nbins] - s0[i])
        if err < best_err:
            best, best_err = i, err
    return best


BUILTIN = {"minmax": MinMax, "percentile": Percentile, "entropy": Entropy, "mse": MSE}


def candidate_methods(spec: CalibratorSpec) -> dict:
    """``calibrator.method: auto``: every built-in method (the percentile at the job's value),
    each derived from the same statistics; the build keeps the one its evaluation scores best."""
    return {name: make_method(spec.model_copy(update={"method": name})) for name in BUILTIN}


def make_method(spec: CalibratorSpec):
    """Build a method from the job's ``calibrator`` section (``auto``: the default, percentile,
    until the build has scored every candidate)."""
    if spec.class_:
        cls = import_callable(spec.class_, "calibrator.class")
        try:
            method = cls(**(spec.options or {}))
        except TypeError as exc:
            raise JobError(f"calibrator.options: {spec.class_} rejected the options ({exc})") from None
        if not callable(getattr(method, "compute_amax", None)):
            raise JobError(f"calibrator.class: {spec.class_} has no compute_amax(stats) method")
        return method
    if spec.method in ("percentile", "auto"):
        return Percentile(spec.percentile)
    return BUILTIN[spec.method]()


def describe(method) -> dict:
    if hasattr(method, "describe"):
        return method.describe()
    return {"method": f"{type(method).__module__}:{type(method).__qualname__}"}


def compute_ranges(stats: dict[str, TensorStats], method) -> dict[str, Range]:
    """amax per tensor, plus the observed min/max clipped to ±amax (used for affine ranges)."""
    out = {}
    for name in sorted(stats):
        st = stats[name]
        amax = float(method.compute_amax(st))
        if not np.isfinite(amax) or amax < 0:
            raise JobError(f"calibrator returned amax {amax} for tensor '{name}'; amax must be a finite number >= 0")
        out[name] = Range(amax, float(max(st.min, -amax)) if st.count else 0.0,
                          float(min(st.max, amax)) if st.count else 0.0)
    return out
