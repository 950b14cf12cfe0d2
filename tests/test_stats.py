import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trtq.calib.methods import MinMax, Percentile, compute_ranges
from trtq.calib.stats import NBINS, TensorStats, merge_all

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
data = arrays(np.float32, st.integers(1, 400), elements=finite)


def stats_of(chunks) -> TensorStats:
    s = TensorStats()
    for c in chunks:
        s.update(c)
    return s


@settings(max_examples=60, deadline=None)
@given(data, st.integers(1, 399))
def test_merging_two_halves_equals_the_whole(x, cut):
    cut = cut % len(x)
    whole = stats_of([x])
    assert stats_of([x[:cut]]).merge(stats_of([x[cut:]])) == whole
    assert merge_all([{"t": stats_of([x[:cut]])}, {"t": stats_of([x[cut:]])}])["t"] == whole


@settings(max_examples=60, deadline=None)
@given(data, st.sampled_from([1, 3, 8, 32]), st.randoms(use_true_random=False))
def test_batch_size_and_order_do_not_change_the_statistics(x, batch, rnd):
    whole = stats_of([x])
    assert stats_of([x[i:i + batch] for i in range(0, len(x), batch)]) == whole
    perm = list(range(len(x)))
    rnd.shuffle(perm)
    assert stats_of([x[perm][i:i + batch] for i in range(0, len(x), batch)]) == whole


def test_histogram_grows_without_losing_counts():
    s = TensorStats()
    s.update(np.full(10, 0.001, np.float32))
    s.update(np.full(5, 1000.0, np.float32))
    assert s.hist.sum() == 15 and s.count == 15
    assert s.absmax == 1000.0 and 1000.0 < NBINS * s.bin_width
    # the small values sit in bin 0 after coarsening, the large ones in the bin of 1000
    assert s.hist[0] == 10 and s.hist[int(1000.0 / s.bin_width)] == 5


def test_all_zero_tensor_then_real_values():
    s = TensorStats()
    s.update(np.zeros(7, np.float32))
    assert s.absmax == 0.0 and s.hist.sum() == 7
    s.update(np.array([2.0], np.float32))
    assert s.hist[0] == 7 and s.hist.sum() == 8


def test_minmax_is_the_observed_absolute_maximum():
    s = stats_of([np.array([-7.5, 0.0, 3.0], np.float32), np.array([5.0], np.float32)])
    assert MinMax().compute_amax(s) == 7.5
    r = compute_ranges({"t": s}, MinMax())["t"]
    assert (r.amax, r.min, r.max) == (7.5, -7.5, 5.0)


def test_percentile_on_constructed_data():
    x = np.arange(1, 10001, dtype=np.float32)  # bin width is 1.0 for a max of 10000
    s = stats_of([x])
    assert s.bin_width == 1.0
    assert 5000 <= Percentile(50).compute_amax(s) <= 5001
    assert 9900 <= Percentile(99).compute_amax(s) <= 9901
    assert Percentile(100).compute_amax(s) == 10000
    # a single far outlier is clipped away by 99.99 but not by minmax
    y = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 100000).astype(np.float32), [50.0]])
    t = stats_of([y])
    assert Percentile(99.99).compute_amax(t) < 1.01 and MinMax().compute_amax(t) == 50.0


def test_percentile_range_clips_min_and_max():
    s = stats_of([np.concatenate([np.linspace(-1, 1, 100001, dtype=np.float32), [-40.0]])])
    r = compute_ranges({"t": s}, Percentile(99.9))["t"]
    assert r.amax < 1.01 and r.min == -r.amax and r.max == 1.0


def test_persisted_statistics_round_trip(tmp_path):
    s = stats_of([np.random.default_rng(3).normal(size=1000).astype(np.float32)])
    np.savez(tmp_path / "s.npz", **s.to_arrays("t"))
    assert TensorStats.from_arrays(np.load(tmp_path / "s.npz"), "t") == s


@pytest.mark.parametrize("bad", [0, -1, 101])
def test_percentile_must_be_in_range(bad):
    with pytest.raises(ValueError):
        Percentile(bad)
