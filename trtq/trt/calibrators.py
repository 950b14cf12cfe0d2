"""TensorRT 8.6–10.x calibrator classes: ``EntropyCalibrator2`` and ``MinMaxCalibrator``.

They subclass ``trt.IInt8EntropyCalibrator2`` / ``trt.IInt8MinMaxCalibrator`` and forward every
call to a :class:`~trtq.trt.feeder.CalibrationFeeder`, which holds all the logic. The classes
are created on demand from the imported ``tensorrt`` module (TensorRT 11 removed the
calibrator family, so this module is used on the 10.x implicit path only).
"""

from __future__ import annotations

from .feeder import CalibrationFeeder

ALGORITHMS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
CACHE_ALGORITHM = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def calibrator_class(trt, kind: str) -> type:
    """The calibrator class for ``kind`` ('entropy' or 'minmax') over ``trt``'s base class."""
    base = getattr(trt, ALGORITHMS[kind], None)
    if base is None:
        raise AttributeError(f"TensorRT {trt.__version__} has no {ALGORITHMS[kind]} (removed in 11.x)")

    class Calibrator(base):
        def __init__(self, feeder: CalibrationFeeder):
            base.__init__(self)  # TensorRT's pybind classes need the base constructor called explicitly
            self.feeder = feeder

        def get_batch_size(self) -> int:
            # TensorRT 10 networks always have an explicit batch dimension: the batch comes from
            # the input shapes (the calibration profile), and the calibrator reports 1, as
            # NVIDIA's own Polygraphy calibrator does by default.
            return 1

        def get_batch(self, names, *args):
            return self.feeder.get_batch(list(names))

        def read_calibration_cache(self):
            return self.feeder.read_cache()

        def write_calibration_cache(self, cache) -> None:
            try:
                self.feeder.write_cache(cache)
            except BaseException as exc:  # noqa: BLE001 - cannot cross into TensorRT's C++; re-raised later
                self.feeder.error = exc

    Calibrator.__name__ = Calibrator.__qualname__ = "EntropyCalibrator2" if kind == "entropy" else "MinMaxCalibrator"
    return Calibrator
