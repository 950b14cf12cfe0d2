"""The compiled folding kernel against an independent numpy reference: the histogram must be
exactly ``bincount(floor(|x| / 2**e))`` at the width a single look at the whole data would pick,
whatever the order in which the running maximum grew, with exact min/max and per-channel sums."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trtq.calib.stats import NBINS, TensorStats
from trtq.errors import DataError


def reference(x: np.ndarray, stride: int = 1, axis: int | None = None):
    """(exp, counts, min, max, channel sums) computed directly from all the data."""
    x = np.asarray(x, dtype=np.float32)
    amax = float(np.abs(x).max())
    exp = -160 if amax == 0 else max(math.frexp(amax)[1] - 14, -160)  # smallest e with amax < 2**e * NBINS
    sub = x.reshape(len(x), -1)[:, ::stride]
    idx = np.floor(np.abs(sub.astype(np.float64)) * 2.0 ** -exp).astype(np.int64).ravel()
    sums = None
    if axis is not None:
        sums = x.astype(np.float64).sum(axis=tuple(i for i in range(x.ndim) if i != axis % x.ndim))
    return exp, np.bincount(idx, minlength=NBINS), float(x.min()), float(x.max()), sums


def check(st_: TensorStats, x: np.ndarray, stride: int = 1, axis: int | None = None) -> None:
    exp, counts, lo, hi, sums = reference(x, stride, axis)
    assert st_.exp == exp
    assert np.array_equal(st_.hist, counts)
    assert (st_.min, st_.max) == (lo, hi)
    assert st_.count == x.size
    if sums is not None:
        np.testing.assert_allclose(st_.channel_sum, sums, rtol=1e-12, atol=1e-9)


def test_widening_in_the_middle_of_a_batch_keeps_every_count():
    rng = np.random.default_rng(0)
    # small values first, then ever larger ones, inside one tensor of one batch: the kernel
    # widens its bins several times part-way through (chunk by chunk)
    x = np.concatenate([rng.normal(0, 10.0 ** k, 3000) for k in range(-3, 4)]).astype(np.float32)
    x = x.reshape(3, 7, 1000)  # 3 samples, 7 channels
    st_ = TensorStats(channel_axis=1)
    st_.update(x)
    check(st_, x, axis=1)


@pytest.mark.parametrize("axis, shape", [(1, (4, 5, 9, 13)), (-1, (4, 9, 13, 5)), (None, (4, 600)),
                                         (2, (2, 3, 4, 300))])
@pytest.mark.parametrize("stride", [1, 3, 7])
def test_layouts_and_strides_match_the_reference(axis, shape, stride):
    rng = np.random.default_rng(stride)
    x = (rng.standard_cauchy(int(np.prod(shape))) * 0.1).astype(np.float32).reshape(shape)
    x[x < -1] = 0.0  # many exact zeros, as after a ReLU
    st_ = TensorStats(channel_axis=axis)
    for part in (x[:1], x[1:]):  # two batches: the second widens the first's bins
        st_.update(part, stride)
    check(st_, x, stride, axis)


@settings(max_examples=80, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 700)),
              elements=st.floats(-2.0 ** 100, 2.0 ** 100, allow_nan=False, allow_infinity=False, width=32)),
       st.sampled_from([1, 2, 5]))
def test_any_finite_data_matches_the_reference(x, stride):
    st_ = TensorStats(channel_axis=1)
    st_.update(x, stride)
    check(st_, x, stride)


def test_zeros_negative_zeros_and_subnormals():
    st_ = TensorStats()
    z = np.array([[0.0, -0.0, 0.0]], np.float32)
    st_.update(z)
    assert st_.hist[0] == 3 and st_.hist.sum() == 3 and st_.absmax == 0.0
    tiny = np.array([[1e-45, -3e-45, 0.0, 2e-44]], np.float32)  # float32 subnormals
    st_.update(tiny)
    both = np.concatenate([z.ravel(), tiny.ravel()])[None]
    check(st_, both)
    assert st_.hist[1:].sum() == 3  # the subnormals are not lumped into bin 0


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_types_are_folded_as_float32(dtype):
    x = np.linspace(-3, 5, 1001).astype(dtype).reshape(1, -1)
    st_ = TensorStats()
    st_.update(x)
    check(st_, x.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_a_clear_error(bad):
    x = np.ones((2, 300), np.float32)
    x[1, 257] = bad
    with pytest.raises(DataError, match="tensor conv3_out has NaN or infinite values"):
        TensorStats().update(x, name="conv3_out")


def _blocked(x: np.ndarray, block: int) -> np.ndarray:
    """(N, C, H, W) in ONNX Runtime's NCHWc memory order, still shaped (N, C, H, W)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h * w).transpose(0, 1, 3, 2)).reshape(x.shape)


@pytest.mark.parametrize("shape, block", [((3, 16, 7, 9), 8), ((2, 24, 56, 56), 8), ((2, 32, 5, 5), 16),
                                          ((2, 8, 1, 3), 8), ((2, 8, 30, 30), 4), ((2, 64, 17, 3), 32),
                                          ((2, 128, 9, 11), 64)])
@pytest.mark.parametrize("axis, stride", [(1, 1), (None, 1), (1, 3), (None, 7)])
def test_blocked_layout_gives_the_nchw_statistics_bitwise(shape, block, axis, stride):
    rng = np.random.default_rng(block)
    size = int(np.prod(shape))
    # magnitudes over 2**±30, so that float64 sums round and a change of summation order shows
    x = (rng.standard_normal(size) * 2.0 ** rng.integers(-30, 30, size)).astype(np.float32).reshape(shape)
    x[x < -0.5] = 0.0
    nchw, nchwc = TensorStats(axis), TensorStats(axis)
    for part in (slice(0, 1), slice(1, None)):  # two batches: the second widens the bins
        nchw.update(x[part], stride)
        nchwc.update(_blocked(x[part], block), stride, block=block)
    check(nchwc, x, stride, axis)
    assert nchwc == nchw and nchwc.samples == nchw.samples
    if axis is not None:  # the same accumulation order: equal bits, not just close
        assert np.array_equal(nchwc.channel_sum, nchw.channel_sum)


def test_blocked_layout_checks_its_input():
    with pytest.raises(ValueError, match="multiple of 8"):
        TensorStats(1).update(np.ones((1, 12, 2, 2), np.float32), block=8, name="t")
    with pytest.raises(ValueError, match="channels on axis 1"):
        TensorStats(2).update(np.ones((1, 8, 2, 2), np.float32), block=8, name="t")
    x = np.ones((2, 8, 4, 4), np.float32)
    x[1, 3, 2, 1] = np.nan
    with pytest.raises(DataError, match="tensor t has NaN"):
        TensorStats(1).update(x, block=8, name="t")
