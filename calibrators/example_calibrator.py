"""An example user calibrator. Use it from a job with

    calibrator:
      class: calibrators/example_calibrator.py:BlendedCalibrator   # relative to the job file
      options: {weight: 0.5, percentile: 99.99}

A calibrator is any class whose ``compute_amax(stats)`` returns the symmetric range (amax) of
one tensor from its statistics, a :class:`trtq.calib.stats.TensorStats`:

* ``stats.min``, ``stats.max``, ``stats.absmax``, ``stats.count`` — exact running values;
* ``stats.hist`` — counts of |x| in bins of width ``stats.bin_width`` starting at 0;
* ``trtq.calib.methods.rebin(stats)`` — the same as TensorRT's 2048 bins over [0, absmax].

The keys of ``options`` are passed to the constructor. ``describe()`` (optional) is what
ranges.json and the report record about the method.
"""

from trtq.calib.methods import MinMax, Percentile


class BlendedCalibrator:
    """amax = weight · percentile + (1 − weight) · max: between clipping outliers and keeping them."""

    def __init__(self, weight: float = 0.5, percentile: float = 99.99):
        if not 0 <= weight <= 1:
            raise ValueError("weight must be in [0, 1]")
        self.weight = weight
        self.percentile = Percentile(percentile)

    def compute_amax(self, stats) -> float:
        return self.weight * self.percentile.compute_amax(stats) + (1 - self.weight) * MinMax().compute_amax(stats)

    def describe(self) -> dict:
        return {"method": "BlendedCalibrator", "weight": self.weight, "percentile": self.percentile.percentile}
