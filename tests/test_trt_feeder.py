"""The calibrator core (trtq.trt.feeder) with host buffers: the protocol TensorRT drives —
get_batch(names) → pointers or None, read/write cache — checked on CPU."""

import ctypes
import types

import numpy as np
import pytest

from trtq.errors import DataError, TrtqError
from trtq.trt.calibrators import calibrator_class
from trtq.trt.feeder import CalibrationFeeder, FeedSpec, HostAllocator, full_batches

SPECS = [FeedSpec("image", (4, 3, 2, 2), np.dtype(np.float32)), FeedSpec("scale", (4, 1), np.dtype(np.float32))]


def _batches(n):
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
             "scale": rng.normal(size=(4, 1)).astype(np.float32)} for _ in range(n)]


def _read(ptr: int, spec: FeedSpec) -> np.ndarray:
    raw = ctypes.string_at(ptr, spec.nbytes)
    return np.frombuffer(raw, dtype=spec.dtype).reshape(spec.shape)


def test_streams_batches_in_order_into_reused_buffers_in_the_order_asked():
    data = _batches(5)
    alloc = HostAllocator()
    feeder = CalibrationFeeder(iter(data), SPECS, alloc)
    assert feeder.batch_size == 4
    seen_ptrs = set()
    for i in range(5):
        ptrs = feeder.get_batch(["scale", "image"])  # TensorRT's order, not the data's
        assert len(ptrs) == 2
        np.testing.assert_array_equal(_read(ptrs[0], SPECS[1]), data[i]["scale"])
        np.testing.assert_array_equal(_read(ptrs[1], SPECS[0]), data[i]["image"])
        seen_ptrs.add(tuple(ptrs))
    assert len(seen_ptrs) == 1, "the same buffers are reused for every batch"
    assert alloc.allocations == 2 and feeder.batches_served == 5
    assert feeder.get_batch(["scale", "image"]) is None
    assert alloc.frees == 2 and not alloc.live, "buffers are freed when the data ends"
    assert feeder.get_batch(["scale", "image"]) is None, "and it stays at the end"
    feeder.raise_pending()  # nothing pending


@pytest.mark.parametrize("bad, message", [
    ({"image": np.zeros((2, 3, 2, 2), np.float32), "scale": np.zeros((4, 1), np.float32)}, "shape (2, 3, 2, 2)"),
    ({"image": np.zeros((4, 3, 2, 2), np.float64), "scale": np.zeros((4, 1), np.float32)}, "dtype float64"),
    ({"scale": np.zeros((4, 1), np.float32)}, "no input 'image'"),
])
def test_bad_batches_stop_calibration_free_buffers_and_raise_afterwards(bad, message):
    alloc = HostAllocator()
    feeder = CalibrationFeeder(iter(_batches(2) + [bad] + _batches(1)), SPECS, alloc)
    assert feeder.get_batch(["image", "scale"]) is not None
    assert feeder.get_batch(["image", "scale"]) is not None
    assert feeder.get_batch(["image", "scale"]) is None  # TensorRT cannot take an exception from get_batch
    assert alloc.frees == alloc.allocations == 2 and not alloc.live
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        feeder.raise_pending()
    assert "batch 3" in str(info.value) and "\n" not in str(info.value)


def test_unknown_input_name_is_an_error_naming_it():
    feeder = CalibrationFeeder(iter(_batches(1)), SPECS, HostAllocator())
    assert feeder.get_batch(["images"]) is None
    with pytest.raises(DataError, match="input 'images'.*feeds image, scale"):
        feeder.raise_pending()


def test_failing_data_source_frees_device_memory_and_surfaces_the_error():
    alloc = HostAllocator()

    def stream():
        yield from _batches(2)
        raise OSError("disk went away")

    feeder = CalibrationFeeder(stream(), SPECS, alloc)
    assert feeder.get_batch(["image", "scale"]) and feeder.get_batch(["image", "scale"])
    assert feeder.get_batch(["image", "scale"]) is None
    assert alloc.frees == 2 and not alloc.live
    with pytest.raises(TrtqError, match="OSError: disk went away"):
        feeder.raise_pending()


def test_context_manager_frees_buffers_when_the_build_is_abandoned():
    alloc = HostAllocator()
    with pytest.raises(KeyboardInterrupt):
        with CalibrationFeeder(iter(_batches(3)), SPECS, alloc) as feeder:
            feeder.get_batch(["image", "scale"])
            raise KeyboardInterrupt
    assert alloc.allocations == 2 and alloc.frees == 2 and not alloc.live


def test_cache_protocol_reads_what_was_given_and_writes_atomically(tmp_path):
    cache = b"TRT-100300-EntropyCalibration2\nimage: 3c010a14\n"
    out = tmp_path / "calibration.tensorrt.cache"
    feeder = CalibrationFeeder([], SPECS, HostAllocator(), cache_in=cache, cache_out=out)
    assert feeder.read_cache() == cache
    feeder.write_cache(memoryview(b"TRT-100300-EntropyCalibration2\nimage: 3c000000\n"))
    assert out.read_bytes() == b"TRT-100300-EntropyCalibration2\nimage: 3c000000\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "no temporary file is left"
    assert CalibrationFeeder([], SPECS, HostAllocator()).read_cache() is None


def test_cache_only_feeder_reports_that_tensorrt_rejected_the_cache():
    alloc = HostAllocator()
    feeder = CalibrationFeeder(iter(_batches(3)), SPECS, alloc, cache_in=b"TRT-1-x\n", cache_only=True)
    assert feeder.read_cache() == b"TRT-1-x\n"
    assert feeder.get_batch(["image", "scale"]) is None
    assert feeder.cache_rejected and alloc.allocations == 0


def test_full_batches_drops_the_short_last_batch_and_counts_it():
    dropped = []
    data = [{"x": np.zeros((8, 2))}, {"x": np.zeros((8, 2))}, {"x": np.zeros((3, 2))}]
    out = list(full_batches(iter(data), 8, dropped))
    assert len(out) == 2 and dropped == [3]


def test_calibrator_classes_need_the_tensorrt_10_calibrator_family():
    # TensorRT 11 removed IInt8EntropyCalibrator2/IInt8MinMaxCalibrator: asking for them there is refused
    trt11 = types.SimpleNamespace(__version__="11.4.0.106")
    with pytest.raises(AttributeError, match="removed in 11.x"):
        calibrator_class(trt11, "entropy")
