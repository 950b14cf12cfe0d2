"""Exact entropy: TensorRT's 2048-bin view binned in a second pass, checked against an
independent transcription of NVIDIA's published EntropyCalibration2 on heavy-tailed data, and
the same ranges whatever the batch size, sharding or statistics reuse."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import job_with
from trtq.calib.methods import Entropy, kl_threshold, needs, rebin
from trtq.calib.stats import EXACT_HISTOGRAM, ExactHistogram, TensorStats
from trtq.errors import DataError


def nvidia_entropy_amax(values: np.ndarray, bins: int = 2048, start: int = 128, levels: int = 128) -> float:
    """EntropyCalibration2 as NVIDIA publishes it (pytorch-quantization's histogram calibrator),
    one candidate at a time: |x| in 2048 bins over [0, max]; hist[0] = hist[1]; for each i,
    P = hist[:i] plus the outliers on its last bin, Q = hist[:i]'s levels (np.digitize over
    linspace(0, i, 129)) spread over their non-zero bins; amax = the edge of bin i with the
    smallest KL, the last minimum."""
    a = np.abs(values.astype(np.float64))
    hist, edges = np.histogram(a, bins=bins, range=(0, a.max()))
    h = hist.astype(np.float64)
    h[0] = h[1]
    kl = []
    for i in range(start, bins + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        level[h[:i] == 0] = -1
        q = np.zeros(i)
        for k in np.unique(level[level >= 0]):
            members = level == k
            q[members] = h[:i][members].sum() / members.sum()
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        kl.append(np.inf if (q[m] == 0).any() else float(np.sum(p[m] * np.log(p[m] / q[m]))))
    kl = np.asarray(kl)
    return float(edges[start + len(kl) - 1 - int(np.argmin(kl[::-1]))])


def two_passes(x: np.ndarray, batch: int) -> TensorStats:
    s = TensorStats()
    for i in range(0, len(x), batch):
        s.update(x[i:i + batch])
    exact = ExactHistogram(s.absmax)
    for i in range(0, len(x), batch):
        exact.update(x[i:i + batch])
    s.attach_exact(exact)
    return s


@pytest.fixture(scope="module")
def heavy_tail():
    """Laplace(0, 1) and ten outliers in [50, 100]: the interpolated 2048-bin view picked
    11.96 here against the published algorithm's 9.72 (+23 %)."""
    rng = np.random.default_rng(0)
    return np.concatenate([rng.laplace(0, 1, 100_000), rng.uniform(50, 100, 10)]).astype(np.float32)


def test_entropy_matches_nvidias_published_algorithm_within_one_percent(heavy_tail):
    expected = nvidia_entropy_amax(heavy_tail)
    got = Entropy().compute_amax(two_passes(heavy_tail, 1000))
    assert abs(got / expected - 1) < 0.01, (got, expected)
    # what the fine-to-coarse interpolation gave: the search moves once tail counts are smeared
    hist, width = rebin(two_passes(heavy_tail, 1000))
    assert abs(kl_threshold(hist) * width / expected - 1) > 0.1


@pytest.mark.parametrize("batch", [1, 7, 1000, 100_010])
def test_entropy_is_the_same_whatever_the_batch_size(heavy_tail, batch):
    x = heavy_tail.reshape(-1, 10)
    assert Entropy().compute_amax(two_passes(x, batch)) == Entropy().compute_amax(two_passes(x, len(x)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 30), st.sampled_from([1, 3, 8]), st.sampled_from([1, 2, 5]))
def test_exact_histogram_is_numpys_whatever_the_batching(n, batch, stride):
    x = np.random.default_rng(n).standard_cauchy((n, 2, 3, 7)).astype(np.float32)
    amax = float(np.abs(x).max())
    exact = ExactHistogram(amax)
    for i in range(0, n, batch):
        exact.update(x[i:i + batch], stride)
    want = np.histogram(np.abs(x.reshape(n, -1)[:, ::stride].astype(np.float64)), bins=2048, range=(0, amax))[0]
    assert np.array_equal(exact.hist, want)


@pytest.mark.parametrize("stride", [1, 3])
def test_exact_histogram_of_channel_blocked_data_equals_nchw(stride):
    x = np.random.default_rng(3).laplace(size=(2, 8, 3, 5)).astype(np.float32)
    block = 4  # NCHWc memory order: [N, C/block, H, W, block]
    blocked = np.ascontiguousarray(x.reshape(2, 2, block, 15).transpose(0, 1, 3, 2)).reshape(x.shape)
    amax = float(np.abs(x).max())
    nchw, nchwc = ExactHistogram(amax), ExactHistogram(amax)
    nchw.update(x, stride)
    nchwc.update(blocked, stride, block=block)
    assert nchw == nchwc and nchw.hist.sum() == len(range(0, 120, stride)) * 2


def test_merge_and_store_round_trip_keep_the_exact_histogram(heavy_tail):
    x = heavy_tail.reshape(-1, 10)
    whole = two_passes(x, 64)
    a, b = TensorStats(), TensorStats()
    a.update(x[:5000])
    b.update(x[5000:])
    ea, eb = ExactHistogram(whole.absmax), ExactHistogram(whole.absmax)
    ea.update(x[:5000])
    eb.update(x[5000:])
    a.exact, b.exact = ea, eb  # shard halves binned over the merged amax, as the second pass does
    assert a.merge(b) == whole
    assert TensorStats.from_arrays(whole.to_arrays("t"), "t") == whole
    whole.update(x[:1])  # new values: the exact histogram no longer describes the data
    assert whole.exact_histogram() is None


def test_changed_data_between_passes_is_a_data_error():
    s = TensorStats()
    s.update(np.ones((2, 4), np.float32))
    exact = ExactHistogram(s.absmax)
    with pytest.raises(DataError, match="tensor t: the second calibration pass saw values beyond"):
        exact.update(np.full((1, 4), 2.0, np.float32), name="t")
    exact.update(np.ones((1, 4), np.float32))
    with pytest.raises(DataError, match="saw 4 values, the first 8"):
        s.attach_exact(exact, "t")


def test_entropy_declares_the_second_pass_and_refuses_statistics_without_it():
    assert needs(Entropy()) == {EXACT_HISTOGRAM}
    s = TensorStats()
    s.update(np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError, match="exact 2048-bin histogram"):
        Entropy().compute_amax(s)


def _ranges(tiny):
    return (tiny["dir"] / "out" / "tiny" / "ranges.json").read_bytes()


def test_entropy_build_gives_the_same_ranges_for_any_batch_size_shards_and_reuse(tiny, run_cli):
    base = {"calibrator__method": "entropy", "calibration__batch_size": 24}
    assert run_cli("build", job_with(tiny, **base), "-q", "--force")[0] == 0
    reference = _ranges(tiny)
    report = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert report["calibration"]["exact_histogram_seconds"] > 0
    for change in ({"calibration__batch_size": 1}, {"calibration__batch_size": 5, "calibration__shards": 3}):
        assert run_cli("build", job_with(tiny, **{**base, **change}), "-q", "--force")[0] == 0
        assert _ranges(tiny) == reference, change
    # stored statistics of a minmax build get only the second pass; then both are reused
    assert run_cli("build", job_with(tiny, calibrator__method="minmax"), "-q", "--force")[0] == 0
    for second_pass in (True, False):
        assert run_cli("build", job_with(tiny, **base), "-q")[0] == 0
        report = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
        assert report["calibration"]["reused_statistics"] is True
        assert (report["calibration"]["exact_histogram_seconds"] > 0) is second_pass
        assert _ranges(tiny) == reference


def test_exact_histogram_places_values_on_and_beside_every_edge_as_numpy_does():
    amax = np.float32(7.3)
    on = np.linspace(0, float(amax), 2049).astype(np.float32)
    x = np.concatenate([on, np.nextafter(on, np.float32(0)), np.nextafter(on, np.float32(9))])
    x = np.clip(x, 0, amax).reshape(3, -1)
    exact = ExactHistogram(float(amax))
    exact.update(x)
    want = np.histogram(np.abs(x.astype(np.float64)), bins=2048, range=(0, float(amax)))[0]
    assert np.array_equal(exact.hist, want)
