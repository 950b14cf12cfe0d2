"""Scale arithmetic shared by calibration caches and Q/DQ graphs."""

from __future__ import annotations

import math

import numpy as np

MIN_AMAX = 1e-30  # below this a range counts as zero (its scale would be denormal or 0)


def safe_amax(amax: float) -> float:
    """A range of 0 (a dead ReLU, an all-zero channel) must not give a zero scale: use 1.0.
    Quantizing zeros with any positive scale gives zeros, so nothing is lost."""
    return float(amax) if math.isfinite(amax) and amax > MIN_AMAX else 1.0


def safe_amax_array(amax: np.ndarray) -> np.ndarray:
    amax = np.asarray(amax, dtype=np.float64)
    return np.where(np.isfinite(amax) & (amax > MIN_AMAX), amax, 1.0)
