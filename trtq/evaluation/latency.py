"""Latency: FP32 and INT8 timed interleaved (A B A B …) so their ratio holds on a noisy
machine, summarised like trtexec (min, mean, median, percentiles, max, throughput)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

CV_WARNING = 0.05


def summarize(times_ms: list[float] | np.ndarray, batch_size: int = 1) -> dict:
    """Statistics of a sequence of per-iteration latencies in milliseconds.

    Percentiles use linear interpolation between order statistics (numpy's default);
    ``cv`` is the coefficient of variation (population std / mean)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings")
    mean = float(t.mean())
    cv = float(t.std() / mean) if mean > 0 else 0.0
    return {
        "iterations": int(t.size),
        "min_ms": float(t.min()),
        "mean_ms": mean,
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p95_ms": float(np.percentile(t, 95)),
        "p99_ms": float(np.percentile(t, 99)),
        "max_ms": float(t.max()),
        "cv": cv,
        "throughput_per_s": float(batch_size * 1000.0 / t[t > 0].mean()) if np.any(t > 0) else 0.0,
        "unstable": cv > CV_WARNING,
    }


def interleaved(calls: dict[str, Callable[[], object]], warmup: int, iterations: int,
                duration_s: float | None = None) -> dict[str, list[float]]:
    """Run each call ``warmup`` times, then rounds of A, B, … in turn: ``iterations`` rounds, and
    more until ``duration_s`` has passed when given. Per-call wall times in ms. The order
    within a round alternates so neither side always goes first."""
    names = list(calls)
    for _ in range(warmup):
        for n in names:
            calls[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    i = 0
    while i < iterations or (duration_s is not None and time.perf_counter() - start < duration_s):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter_ns()
            calls[n]()
            times[n].append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
    return times
