"""The calibrated range of one tensor (:class:`Range`) and the scale arithmetic shared by
calibration caches and Q/DQ graphs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_AMAX = 1e-30  # below this a range counts as zero (its scale would be denormal or 0)


def safe_amax(amax: float) -> float:
    """A range of 0 (a dead ReLU, an all-zero channel) must not give a zero scale: use 1.0.
    Quantizing zeros with any positive scale gives zeros, so nothing is lost."""
    return float(amax) if math.isfinite(amax) and amax > MIN_AMAX else 1.0


def safe_amax_array(amax: np.ndarray) -> np.ndarray:
    amax = np.asarray(amax, dtype=np.float64)
    return np.where(np.isfinite(amax) & (amax > MIN_AMAX), amax, 1.0)


@dataclass(frozen=True)
class Range:
    """``amax``: the symmetric range a calibrator chose; ``min``/``max``: the observed extremes
    clipped to ±amax (what an affine, uint8 activation uses)."""

    amax: float
    min: float
    max: float

    @classmethod
    def symmetric(cls, amax: float) -> Range:
        return cls(amax, -amax, amax)

    @property
    def scale(self) -> float:
        """The symmetric int8 scale: amax / 127 (zero ranges protected)."""
        return safe_amax(self.amax) / 127.0

    @classmethod
    def from_quantization(cls, scale: float, zero_point: int, qmin: int, qmax: int) -> Range:
        """The range a pre-quantized model's activation covers: ``[(qmin − zp)·s, (qmax − zp)·s]``.
        Symmetric int8 (zero point 0) gives ``amax = 127·s``, so :attr:`scale` is ``s`` again;
        otherwise amax is the larger end, the symmetric range that covers it."""
        s = float(np.float32(scale))
        if zero_point == 0 and qmin == -128:
            return cls.symmetric(127.0 * s)
        lo, hi = (qmin - zero_point) * s, (qmax - zero_point) * s
        return cls(max(abs(lo), abs(hi)), lo, hi)

    def to_json(self) -> dict[str, float]:
        return {"amax": self.amax, "min": self.min, "max": self.max, "scale": self.scale}

    @classmethod
    def from_json(cls, doc: dict) -> Range:
        return cls(doc["amax"], doc["min"], doc["max"])


def amaxes(ranges: dict[str, Range]) -> dict[str, float]:
    return {k: r.amax for k, r in ranges.items()}
