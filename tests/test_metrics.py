import math

import numpy as np
import pytest

from trtq.evaluation.latency import interleaved, summarize
from trtq.evaluation.metrics import AccuracyAccumulator, sqnr_db, wilson_interval


def test_sqnr_of_known_signal_and_noise():
    signal = np.ones(100)
    assert sqnr_db(signal, signal + 0.1) == pytest.approx(20.0)
    assert sqnr_db(signal, signal) == math.inf


def test_wilson_interval_of_50_in_100():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_in_0_1():
    lo, hi = wilson_interval(400, 400)
    assert hi == 1.0 and lo == pytest.approx(0.99050, abs=1e-4)


def test_latency_statistics_of_1_to_100_ms():
    s = summarize(np.arange(1, 101, dtype=float), batch_size=2)
    assert (s["min_ms"], s["max_ms"], s["mean_ms"], s["p50_ms"]) == (1, 100, 50.5, 50.5)
    assert s["p90_ms"] == pytest.approx(90.1) and s["p99_ms"] == pytest.approx(99.01)
    assert s["throughput_per_s"] == pytest.approx(2 * 1000 / 50.5)
    assert s["unstable"] is True  # CV of 1..100 is 57 %


def test_interleaved_alternates_and_counts():
    order = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iterations=4)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(times["a"]) == len(times["b"]) == 4


def test_accuracy_accumulator_known_answer():
    acc = AccuracyAccumulator(top_k=2)
    fp32 = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    int8 = np.array([[3.0, 2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    acc.update(fp32[:2], int8[:2], np.array([0, 1]))
    acc.update(fp32[2:], int8[2:], np.array([1, 0]))
    r = acc.result()
    assert r["fp32"]["top1"] == 0.75 and r["int8"]["top1"] == 0.5
    assert r["int8"]["top1_agreement"] == 0.75
    assert r["fp32"]["top2"] == 1.0 and r["int8"]["top2"] == 0.75
    assert r["int8"]["fidelity"]["max_abs_error"] == 2.0


def test_agreement_only_for_batch_by_classes_outputs():
    rng = np.random.default_rng(0)
    maps = AccuracyAccumulator()  # a detector's probability map [N, 1, H, W]: a flattened argmax means nothing
    maps.update(rng.random((4, 1, 8, 8)), rng.random((4, 1, 8, 8)), None)
    assert "top1_agreement" not in maps.result()["int8"]
    seqs = AccuracyAccumulator()  # a recogniser's [N, T, C]: per-step distributions, not one class
    seqs.update(rng.random((4, 10, 30)), rng.random((4, 10, 30)), None)
    assert "top1_agreement" not in seqs.result()["int8"]
    logits = AccuracyAccumulator()
    x = rng.random((4, 5))
    logits.update(x, x, None)
    assert logits.result()["int8"]["top1_agreement"] == 1.0
