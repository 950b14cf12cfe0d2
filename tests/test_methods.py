"""Known answers for the calibration methods. The entropy check is written independently of
trtq's vectorised code: a literal transcription of the §4 algorithm, one candidate at a time,
on the full-data histogram built directly with numpy."""

from pathlib import Path

import numpy as np
import pytest

from trtq.calib.methods import MSE, Entropy, MinMax, Percentile, kl_threshold, make_method, mse_threshold, rebin
from trtq.calib.stats import ExactHistogram, TensorStats
from trtq.errors import JobError
from trtq.job import CalibratorSpec
from trtq.quant.weights import per_channel_amax, per_channel_amax_mse


def _stats(x, parts: int = 7) -> TensorStats:
    """Two passes, as calibration makes them: the statistics, then the exact histogram."""
    s = TensorStats()
    for chunk in np.array_split(np.asarray(x, np.float32), parts):
        s.update(chunk)
    exact = ExactHistogram(s.absmax)
    for chunk in np.array_split(np.asarray(x, np.float32), parts):
        exact.update(chunk)
    s.attach_exact(exact)
    return s


def reference_entropy_bins(hist: np.ndarray, start: int = 128, levels: int = 128) -> int:
    """EntropyCalibration2 per NVIDIA's description, literally."""
    h = hist.astype(np.float64).copy()
    h[0] = h[1]
    kls = []
    for i in range(start, len(h) + 1):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        edges = np.linspace(0, i, levels + 1)
        level_of = np.digitize(np.arange(i), edges) - 1
        level_of[h[:i] == 0] = -1
        q = np.zeros(i)
        for k in range(levels):
            members = level_of == k
            if members.any():
                q[members] = h[:i][members].sum() / members.sum()
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        kls.append(np.inf if np.any(q[m] == 0) else float(np.sum(p[m] * np.log(p[m] / q[m]))))
    kls = np.array(kls)
    return start + len(kls) - 1 - int(np.argmin(kls[::-1]))


@pytest.fixture(scope="module")
def long_tail():
    rng = np.random.default_rng(7)
    return np.concatenate([rng.laplace(0, 1, 400_000), rng.uniform(25, 40, 40)]).astype(np.float32)


def test_entropy_on_a_long_tail_is_well_below_max_and_matches_the_reference(long_tail):
    a = np.abs(long_tail)
    hist, edges = np.histogram(a, bins=2048, range=(0, a.max()))
    expected = edges[reference_entropy_bins(hist)]  # upper edge of the chosen bin
    got = Entropy().compute_amax(_stats(long_tail))
    assert got < 0.5 * a.max()
    assert got == pytest.approx(expected, rel=1e-6)  # the exact 2048 bins: the same candidate


def test_vectorised_kl_equals_the_literal_algorithm_on_the_same_histogram(long_tail):
    hist, _ = np.histogram(np.abs(long_tail), bins=2048, range=(0, np.abs(long_tail).max()))
    assert kl_threshold(hist) == reference_entropy_bins(hist)
    small = np.random.default_rng(1).integers(0, 50, 300)
    small[250:] = 0
    small[299] = 3
    assert kl_threshold(small) == reference_entropy_bins(small)


def test_rebin_keeps_every_count_within_one_fine_bin(long_tail):
    s = _stats(long_tail)
    coarse, width = rebin(s)
    assert coarse.sum() == pytest.approx(len(long_tail))
    direct, _ = np.histogram(np.abs(long_tail), bins=2048, range=(0, s.absmax))
    cum_err = np.abs(np.cumsum(coarse) - np.cumsum(direct))
    # a coarse edge can misplace at most the counts of the fine bin it cuts
    assert cum_err.max() <= s.hist.max()


def test_mse_on_uniform_data_clips_just_below_the_max():
    x = np.random.default_rng(0).uniform(-1, 1, 1_000_000).astype(np.float32)
    amax = MSE().compute_amax(_stats(x))
    # analytic optimum for U(-1,1), 8 bits: (1-a)^2 = 2a/(12*127^2) → a ≈ 0.9968
    assert 0.993 <= amax <= 1.0


def brute_force_mse_bins(hist: np.ndarray, start_bin: int = 128, qmax: int = 127) -> int:
    """Every candidate i, every bin: quantize the bin centre with step i/qmax, sum the errors."""
    centres = np.arange(len(hist)) + 0.5
    errors = []
    for i in range(start_bin, len(hist) + 1):
        step = i / qmax
        q = np.clip(np.rint(centres / step), 0, qmax) * step
        errors.append(float(((q - centres) ** 2 * hist).sum()))
    return start_bin + int(np.argmin(errors))


@pytest.mark.parametrize("seed", range(6))
def test_prefix_sum_mse_equals_the_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    draws = [np.abs(rng.normal(0, 1, 50_000)), np.abs(rng.standard_cauchy(50_000)), rng.uniform(0, 1, 50_000),
             np.concatenate([np.abs(rng.normal(0, 1, 20_000)), rng.uniform(0, 40, 7)]),
             np.concatenate([np.zeros(30_000), np.abs(rng.laplace(0, 1, 2_000))]), rng.exponential(1, 50_000)]
    x = draws[seed]
    hist = np.histogram(x, bins=2048, range=(0, x.max()))[0].astype(np.float64)
    assert mse_threshold(hist) == brute_force_mse_bins(hist)
    short = hist[:300].copy()
    assert mse_threshold(short) == brute_force_mse_bins(short)


def test_mse_trades_one_outlier_against_rounding_error():
    # 200k N(0,1) values and one at 60: minimise (60-a)^2 + 200000·(a/127)^2/12 → a ≈ 29.5
    x = np.concatenate([np.random.default_rng(0).normal(0, 1, 200_000), [60.0]]).astype(np.float32)
    assert 28.0 <= MSE().compute_amax(_stats(x)) <= 31.0


def test_methods_order_on_a_long_tail(long_tail):
    s = _stats(long_tail)
    assert MinMax().compute_amax(s) == pytest.approx(np.abs(long_tail).max())
    assert Percentile(99.99).compute_amax(s) < MinMax().compute_amax(s)
    assert Entropy().compute_amax(s) < MinMax().compute_amax(s)


def test_empty_and_zero_tensors_give_zero_amax():
    s = TensorStats()
    s.update(np.zeros(100, np.float32))
    for m in (MinMax(), Percentile(), Entropy(), MSE()):
        assert m.compute_amax(s) == 0.0


def test_user_calibrator_class_from_a_file(tmp_path):
    (tmp_path / "half.py").write_text(
        "class HalfMax:\n"
        "    def __init__(self, factor=0.5):\n"
        "        self.factor = factor\n"
        "    def compute_amax(self, stats):\n"
        "        return self.factor * stats.absmax\n")
    spec = CalibratorSpec.model_validate({"class": f"{tmp_path / 'half.py'}:HalfMax", "options": {"factor": 0.25}})
    method = make_method(spec)
    assert method.compute_amax(_stats([4.0, -8.0])) == 2.0


def test_bundled_example_calibrator():
    root = Path(__file__).resolve().parent.parent
    spec = CalibratorSpec.model_validate({"class": f"{root / 'calibrators' / 'example_calibrator.py'}:BlendedCalibrator"})
    method = make_method(spec)
    s = _stats(np.random.default_rng(0).normal(size=10000))
    assert Percentile(99.99).compute_amax(s) <= method.compute_amax(s) <= MinMax().compute_amax(s)


def test_bad_user_calibrators_are_clear_errors(tmp_path):
    with pytest.raises(JobError, match="cannot import"):
        make_method(CalibratorSpec.model_validate({"class": f"{tmp_path / 'nope.py'}:X"}))
    (tmp_path / "bad.py").write_text("class NoAmax:\n    pass\n")
    with pytest.raises(JobError, match="compute_amax"):
        make_method(CalibratorSpec.model_validate({"class": f"{tmp_path / 'bad.py'}:NoAmax"}))
    with pytest.raises(JobError, match="rejected the options"):
        make_method(CalibratorSpec.model_validate({"class": f"{tmp_path / 'bad.py'}:NoAmax", "options": {"x": 1}}))


def test_weight_mse_clips_a_heavy_tailed_channel_and_keeps_uniform_ones():
    rng = np.random.default_rng(0)
    w = np.stack([rng.uniform(-1, 1, 16384), rng.laplace(0, 0.1, 16384), rng.uniform(-1, 1, 16384)]).astype(np.float32)
    ratio = per_channel_amax_mse(w, 0) / per_channel_amax(w, 0)
    assert ratio[1] < 0.97
    assert ratio[0] == pytest.approx(1.0) and ratio[2] == pytest.approx(1.0)
