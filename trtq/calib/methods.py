"""Calibration methods: statistics of one tensor → its amax (the symmetric range ±amax).

Each method is a small class with one job, ``compute_amax(stats)``; they never see raw
activations, so all methods can be derived from one collection pass.
"""

from __future__ import annotations

import numpy as np

from .stats import TensorStats


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


def make_method(spec) -> MinMax | Percentile:
    """Build a method from the job's ``calibrator`` section."""
    if spec.method == "minmax":
        return MinMax()
    if spec.method == "percentile":
        return Percentile(spec.percentile)
    raise ValueError(f"unknown calibration method {spec.method!r}")


def compute_ranges(stats: dict[str, TensorStats], method) -> dict[str, dict[str, float]]:
    """amax per tensor, plus the observed min/max clipped to ±amax (used for affine ranges)."""
    out = {}
    for name in sorted(stats):
        st = stats[name]
        amax = float(method.compute_amax(st))
        out[name] = {
            "amax": amax,
            "min": float(max(st.min, -amax)) if st.count else 0.0,
            "max": float(min(st.max, amax)) if st.count else 0.0,
        }
    return out
