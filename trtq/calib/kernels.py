"""Compiled (numba) kernel folding one batch of one tensor into its statistics in a single pass
over the values: running min/max, per-channel sums and the power-of-two-width |x| histogram of
:mod:`trtq.calib.stats`.

It gives exactly the counts of binning every value with numpy at the final width (the bins of
a power-of-two grid nest, so coarsening part-way through is exact), and it runs without the GIL,
so the tensors of a batch fold in parallel on threads. Per value it costs about half of the
numpy expressions it replaced (``bench/fold.py``: 2.2 against 4.2 ns on one thread, 2-core AVX2).

The values are processed in chunks of ``_CHUNK``: one vectorised pass computes the chunk's
partial sums, its min/max (on the float32 bit patterns mapped to ordered integers, which
vectorises where float comparisons with NaN semantics do not) and its bin indices; then a
scalar pass increments the counts, spread over ``_LANES`` copies of the histogram so repeated
bins (zeros after a ReLU) do not serialise on one memory location.
"""

from __future__ import annotations

import math
from pathlib import Path

import numba as nb
import numpy as np

NBINS = 16384
LOG2_NBINS = 14
EMPTY_EXP = -160  # width exponent of a histogram that has seen only zeros
_CHUNK = 256
_LANES = 4
_ORDER = np.int32(0x7FFFFFFF)
_POS_INF = np.int32(0x7F800000)  # ordered key of +inf (a positive float's key is its bit pattern)


@nb.njit(nogil=True, cache=True)
def exp_for(amax: float) -> int:
    """Smallest exponent e with ``amax / 2**e < NBINS`` (``EMPTY_EXP`` for amax 0)."""
    if amax <= 0.0:
        return EMPTY_EXP
    _, k = math.frexp(amax)
    return max(k - LOG2_NBINS, EMPTY_EXP)


@nb.njit(nogil=True, cache=True, inline="always")
def _ordered(bits):
    """float32 bit pattern -> int32 with the same order as the floats (NaNs beyond ±inf)."""
    return np.int32(bits ^ np.int32(np.int32(bits >> np.int32(31)) & _ORDER))


@nb.njit(nogil=True, cache=True)
def _unordered(k) -> float:
    k = np.int32(k)
    bits = np.empty(1, np.int32)
    bits[0] = np.int32(k ^ np.int32(np.int32(k >> np.int32(31)) & _ORDER))
    return np.float64(bits.view(np.float32)[0])


@nb.njit(nogil=True, cache=True)
def _key(value: float):
    """Ordered key of ``value`` rounded to float32."""
    f = np.empty(1, np.float32)
    f[0] = value
    return _ordered(f.view(np.int32)[0])


@nb.njit(nogil=True, cache=True, inline="always")
def _neg(k):
    """Key of the negated float of key ``k``."""
    return np.int32(-np.int32(k + np.int32(1)))


@nb.njit(nogil=True, cache=True)
def _limit_key(exp):
    if exp + LOG2_NBINS >= 128:  # beyond float32: no finite value reaches it
        return _key(np.inf)
    return _key(math.ldexp(1.0, exp + LOG2_NBINS))


@nb.njit(nogil=True, cache=True)
def _coarsen(counts, shift):
    """Merge neighbouring bins of every row of ``counts``: bin i goes to bin i >> shift."""
    for row in range(counts.shape[0]):
        for i in range(1, NBINS):
            j = i >> shift if shift < 63 else 0
            if j != i:
                counts[row, j] += counts[row, i]
                counts[row, i] = 0


@nb.njit(nogil=True, cache=True, inline="always")
def _width(exp):
    """(wide, float32 scale, float64 scale, top key) of a histogram at width ``2**exp``:
    float32 multiply by 2**-exp is exact while 2**-exp is a normal float32 (not ``wide``); a
    value whose key reaches the top key needs a wider bin."""
    wide = exp <= -100
    scale = np.float32(0.0) if wide else np.float32(math.ldexp(1.0, -exp))
    return wide, scale, math.ldexp(1.0, -exp), _limit_key(exp)


@nb.njit(nogil=True, cache=True, inline="always")
def _chunk(b, bi, c0, w, block, firsts, stride, lanes, hist, idx, iu, exp, wide, scale, scale64, top_k, lo_k, hi_k):
    """Fold values ``b[c0:c0+w]`` (``bi``: their bits) into min/max keys and the histogram;
    widens the bins when a value needs it. The chunk is rows of ``block`` lanes (1 for NCHW
    data); with ``stride`` > 1 only the rows ``firsts[lane] + t * stride`` of each lane are
    histogrammed. Returns the updated state and 1 when a NaN or inf was met."""
    clo = np.int32(0x7FFFFFFF)
    chi = np.int32(-0x80000000)
    v = b[c0:c0 + w]  # (indexing views from 0 lets LLVM vectorise: no negative-index fix-ups)
    vi = bi[c0:c0 + w]
    for j in range(w):  # one vectorised pass: min/max keys and bin indices
        k = _ordered(vi[j])
        clo = k if k < clo else clo
        chi = k if k > chi else chi
        idx[j] = np.int32(abs(v[j]) * scale)
    if chi >= _POS_INF or clo <= _neg(_POS_INF):  # an inf or a NaN
        return exp, wide, scale, scale64, top_k, lo_k, hi_k, 1
    lo_k = clo if clo < lo_k else lo_k
    hi_k = chi if chi > hi_k else hi_k
    # widen the histogram when |x| reached the top of its range
    widened = False
    if hi_k >= top_k or lo_k <= _neg(top_k):
        new_exp = exp_for(max(-_unordered(lo_k), _unordered(hi_k)))
        if new_exp > exp:
            _coarsen(lanes, new_exp - exp)
            _coarsen(hist, new_exp - exp)
            exp = new_exp
            wide, scale, scale64, top_k = _width(exp)
            widened = True
    if stride == 1 and not (wide or widened):
        m = w  # the indices computed above hold
    elif stride == 1:
        for j in range(w):
            idx[j] = np.int32(abs(np.float64(b[c0 + j])) * scale64)
        m = w
    else:
        m = 0
        for lane in range(block):
            for row in range(firsts[lane], w // block, stride):
                idx[m] = np.int32(abs(np.float64(b[c0 + row * block + lane])) * scale64)
                m += 1
    _count(lanes, iu, m)
    return exp, wide, scale, scale64, top_k, lo_k, hi_k, 0


@nb.njit(nogil=True, cache=True, inline="always")
def _count(lanes, iu, m):
    """Count bins ``iu[:m]`` spread over the _LANES copies (repeated bins do not serialise on one
    memory location); unsigned indices index without a negative-index check."""
    m4 = m - m % 4
    for j in range(0, m4, 4):
        lanes[0, iu[j]] += 1
        lanes[1, iu[j + 1]] += 1
        lanes[2, iu[j + 2]] += 1
        lanes[3, iu[j + 3]] += 1
    for j in range(m4, m):
        lanes[0, iu[j]] += 1


@nb.njit(nogil=True, cache=True)
def _finish(lanes, hist, exp, lo_k, hi_k, bad):
    if bad:
        return 0.0, 0.0, exp, 1
    for row in range(_LANES):
        for i in range(NBINS):
            hist[0, i] += lanes[row, i]
    if hi_k < lo_k:
        return 0.0, 0.0, exp, 0
    return _unordered(lo_k), _unordered(hi_k), exp, 0


@nb.njit(nogil=True, cache=True, inline="always")
def _combine(a0, a1, a2, a3, a4, a5, a6, a7):
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


@nb.njit(nogil=True, cache=True)
def fold(x, stride, hist, exp, sums):
    """Fold ``x`` (float32, C-contiguous, shape (samples, outer, channels, inner)) in.

    ``hist`` (int64[1, NBINS], at width ``2**exp``) is updated in place; every ``stride``-th
    value of each sample (position in the flattened sample) is histogrammed. ``sums``
    (float64[channels], or empty) gets each sample's per-channel sums added, sample by sample;
    each channel's positions are summed in float64 on 8 interleaved accumulators (position i on
    accumulator i % 8, the last ``inner % 8`` on the first), combined pairwise.
    Returns (min, max, exp, non-finite): ``non-finite`` is 1 when a NaN or inf was met, in which
    case nothing else is meaningful.
    """
    n, outer, channels, inner = x.shape
    xi = x.view(np.int32)
    lanes = np.zeros((_LANES, NBINS), np.int32)  # a call holds < 2**31 values per lane
    idx = np.empty(_CHUNK, np.int32)
    iu = idx.view(np.uint32)
    first = np.zeros(1, np.int64)
    per_sample = np.zeros(channels, np.float64)
    acc = np.zeros(8, np.float64)  # accumulator q: the positions p with p % 8 == q
    keep_sums = sums.shape[0] == channels
    lo_k = np.int32(0x7FFFFFFF)
    hi_k = np.int32(-0x80000000)
    wide, scale, scale64, top_k = _width(exp)
    for s in range(n):
        per_sample[:] = 0.0
        for o in range(outer):
            for c in range(channels):
                b = x[s, o, c]
                bi = xi[s, o, c]
                p0 = (o * channels + c) * inner  # position of b[0] in the flattened sample
                acc[:] = 0.0
                for c0 in range(0, inner, _CHUNK):
                    w = min(inner, c0 + _CHUNK) - c0
                    first[0] = -(p0 + c0) % stride  # the positions p with p % stride == 0
                    exp, wide, scale, scale64, top_k, lo_k, hi_k, bad = _chunk(
                        b, bi, c0, w, 1, first, stride, lanes, hist, idx, iu,
                        exp, wide, scale, scale64, top_k, lo_k, hi_k)
                    if bad:
                        return _finish(lanes, hist, exp, lo_k, hi_k, bad)
                    if keep_sums:
                        v = b[c0:c0 + w]
                        w8 = w - w % 8
                        for j in range(0, w8, 8):
                            group = v[j:j + 8]
                            for t in range(8):
                                acc[t] += np.float64(group[t])
                        for j in range(w8, w):
                            acc[0] += np.float64(v[j])
                per_sample[c] += _combine(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7])
        if keep_sums:
            for c in range(channels):
                sums[c] += per_sample[c]
    return _finish(lanes, hist, exp, lo_k, hi_k, 0)


@nb.njit(nogil=True, cache=True)
def fold_blocked(x, stride, hist, exp, sums):
    """:func:`fold` for channel-blocked data: ``x`` of shape (samples, blocks, positions, block),
    value ``x[s, k, i, l]`` being channel ``c = k * block + l`` at position ``i`` (ONNX Runtime's
    NCHWc layout). Min/max and counts do not depend on the order of the values, the ``stride``
    subsample is the same values as in NCHW order (NCHW position ``c * positions + i``), and
    the channel sums use the same accumulation order as :func:`fold` on the NCHW layout — so
    everything is bitwise equal to folding the NCHW tensor."""
    n, blocks, positions, block = x.shape
    flat = x.reshape(n, blocks, positions * block)
    flat_i = flat.view(np.int32)
    rows = max(8, _CHUNK // block)  # positions per chunk: a multiple of 8
    lanes = np.zeros((_LANES, NBINS), np.int32)
    idx = np.empty(rows * block, np.int32)
    iu = idx.view(np.uint32)
    firsts = np.zeros(block, np.int64)
    # accumulator q (position % 8) of channel lane l at q * block + l: 8 positions of all the
    # lanes are 8 * block consecutive values, added to the accumulators in one run
    acc = np.zeros(8 * block, np.float64)
    keep_sums = sums.shape[0] == blocks * block
    lo_k = np.int32(0x7FFFFFFF)
    hi_k = np.int32(-0x80000000)
    wide, scale, scale64, top_k = _width(exp)
    tail = positions - positions % 8  # positions from here on add to accumulator 0
    for s in range(n):
        for k in range(blocks):
            b = flat[s, k]
            bi = flat_i[s, k]
            acc[:] = 0.0
            for r0 in range(0, positions, rows):
                r1 = min(positions, r0 + rows)
                if stride > 1:  # rows of each lane whose NCHW position is a multiple of stride
                    for lane in range(block):
                        firsts[lane] = -((k * block + lane) * positions + r0) % stride
                exp, wide, scale, scale64, top_k, lo_k, hi_k, bad = _chunk(
                    b, bi, r0 * block, (r1 - r0) * block, block, firsts, stride, lanes, hist, idx, iu,
                    exp, wide, scale, scale64, top_k, lo_k, hi_k)
                if bad:
                    return _finish(lanes, hist, exp, lo_k, hi_k, bad)
                if keep_sums:
                    for g in range(r0 * block, min(r1, tail) * block, 8 * block):
                        group = b[g:g + 8 * block]
                        for t in range(8 * block):
                            acc[t] += np.float64(group[t])
                    for i in range(max(r0, tail), r1):
                        for lane in range(block):
                            acc[lane] += np.float64(b[i * block + lane])
            if keep_sums:
                for lane in range(block):
                    sums[k * block + lane] += 0.0 + _combine(
                        acc[lane], acc[block + lane], acc[2 * block + lane], acc[3 * block + lane],
                        acc[4 * block + lane], acc[5 * block + lane], acc[6 * block + lane], acc[7 * block + lane])
    return _finish(lanes, hist, exp, lo_k, hi_k, 0)


@nb.njit(nogil=True, cache=True)
def bin_exact(x, edges, hist):
    """Add the |values| of ``x`` (float32 [samples, values], C-contiguous) to ``hist``
    (int64[bins]) in the bins ``edges`` (``numpy.linspace(0, amax, bins + 1)``) bound, exactly as
    ``numpy.histogram(|x|, bins, range=(0, amax))`` places them (the last bin holds amax).
    Returns how many values lie above amax (not counted).

    The bin is ``floor(p)``, ``p = |x| · bins / amax`` in float64. ``p`` and the edges are each
    within ~1e-12 bins of the exact quotients, so ``floor(p)`` can only be wrong when ``p`` is
    within 1e-9 of an integer (or at or past ``bins``): a chunk holding such a value (zeros
    aside, which are bin 0) is re-binned against the edges themselves. The common path is one
    vectorised pass per chunk; counts are spread over ``_LANES`` copies, as in :func:`fold`."""
    bins = len(hist)
    top = edges[bins]
    norm = bins / top
    lanes = np.zeros((_LANES, bins + 1), np.int64)  # column ``bins``: values above amax
    idx = np.empty(_CHUNK, np.int32)
    iu = idx.view(np.uint32)
    for s in range(x.shape[0]):
        row = x[s]
        m = row.shape[0]
        for c0 in range(0, m, _CHUNK):
            w = min(m, c0 + _CHUNK) - c0
            v = row[c0:c0 + w]  # (a view from 0 vectorises: no negative-index fix-ups)
            suspect = 0
            for j in range(w):
                a = abs(np.float64(v[j]))
                p = min(a * norm, np.float64(bins))
                k = np.int32(p)
                f = p - k
                suspect += ((f < 1e-9) & (a > 0)) | (f > 1.0 - 1e-9) | (k >= bins)
                idx[j] = k
            if suspect:
                for j in range(w):
                    a = abs(np.float64(v[j]))
                    k = min(idx[j], bins - 1)
                    if a > top:
                        k = bins
                    elif a < edges[k]:
                        k -= 1
                    elif k != bins - 1 and a >= edges[k + 1]:
                        k += 1
                    idx[j] = k
            _count(lanes, iu, w)
    beyond = 0
    for lane in range(_LANES):
        for i in range(bins):
            hist[i] += lanes[lane, i]
        beyond += lanes[lane, bins]
    return beyond


def needs_compiling() -> bool:
    """Whether the first fold compiles the kernels: numba's on-disk cache (``cache=True``, beside
    this module) has no index for :func:`fold` (which every calibration runs) yet and this process
    has not compiled it."""
    try:
        return not (fold.signatures or Path(fold._cache._cache_file._index_path).exists())
    except AttributeError:  # numba's cache internals moved: say nothing rather than guess
        return False
