"""The CUDA glue (trtq.trt.cuda) against the real cuda-python package.

On machines without a GPU, cuda-python imports and every runtime call returns an error code;
trtq must turn that into one line naming the call. The calls the glue makes must exist in
cuda-python's runtime module. On a GPU (``pytest -m gpu``) the device-buffer path runs for
real: the calibration feeder streams batches through reused device buffers and frees them.
"""

import ast
import inspect

import numpy as np
import pytest

from trtq.errors import BackendError
from trtq.trt import cuda
from trtq.trt.feeder import CalibrationFeeder, FeedSpec

cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is a dev dependency (pip install -e .[dev])")


def _has_gpu() -> bool:
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


gpu = pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU visible (cudaGetDeviceCount failed or found none)")


def test_every_cuda_runtime_call_the_glue_makes_exists_in_cuda_python():
    tree = ast.parse(inspect.getsource(cuda.CudaRuntime))
    called = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "_call"}
    called |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
               and n.value.attr == "rt"}
    assert {"cudaMalloc", "cudaFree", "cudaMemcpy", "cudaMemcpyAsync", "cudaEventElapsedTime"} <= called
    assert sorted(n for n in called if not hasattr(cudart, n)) == []
    assert hasattr(cudart.cudaMemcpyKind, "cudaMemcpyHostToDevice")


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU message; this machine has a GPU")
def test_no_driver_is_a_one_line_error_naming_the_call():
    rt = cuda.cuda_runtime()
    assert rt.binding == "cuda-python"
    with pytest.raises(BackendError) as info:
        cuda.DeviceAllocator(rt).alloc(1024)
    msg = str(info.value)
    assert msg.startswith("CUDA cudaMalloc failed: cudaError") and "nvidia-smi" in msg and "\n" not in msg
    with pytest.raises(BackendError, match="CUDA cudaGetDevice failed"):
        rt.device()


@pytest.mark.gpu
@gpu
def test_device_buffers_stream_batches_are_reused_and_freed():
    rt = cuda.cuda_runtime()
    alloc = cuda.DeviceAllocator(rt)
    spec = FeedSpec("x", (8, 3, 32, 32), np.dtype(np.float32))
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=spec.shape).astype(np.float32)} for _ in range(20)]
    feeder = CalibrationFeeder(iter(data), [spec], alloc)
    ptrs = set()
    for i in range(20):
        (ptr,) = feeder.get_batch(["x"])
        ptrs.add(ptr)
        back = np.empty(spec.shape, np.float32)
        rt.dtoh(back, ptr)
        np.testing.assert_array_equal(back, data[i]["x"])
    assert len(ptrs) == 1 and alloc.allocations == 1
    assert feeder.get_batch(["x"]) is None and alloc.frees == 1


@pytest.mark.gpu
@gpu
def test_device_buffers_are_freed_when_a_batch_is_bad():
    rt = cuda.cuda_runtime()
    alloc = cuda.DeviceAllocator(rt)
    spec = FeedSpec("x", (4, 16), np.dtype(np.float32))
    data = [{"x": np.ones((4, 16), np.float32)}, {"x": np.ones((4, 17), np.float32)}]
    feeder = CalibrationFeeder(iter(data), [spec], alloc)
    assert feeder.get_batch(["x"]) is not None
    assert feeder.get_batch(["x"]) is None
    assert alloc.allocations == alloc.frees == 1
    with pytest.raises(Exception, match="shape"):
        feeder.raise_pending()


@pytest.mark.gpu
@gpu
def test_cuda_events_time_a_copy_and_device_facts_are_read():
    rt = cuda.cuda_runtime()
    info = rt.device()
    assert info["name"] and info["compute_capability"].count(".") == 1
    stream = rt.stream()
    start, end = rt.event(), rt.event()
    a = np.ones(1 << 24, np.float32)
    ptr = rt.malloc(a.nbytes)
    rt.record(start, stream)
    rt.htod(ptr, a, stream)
    rt.record(end, stream)
    rt.synchronize(stream)
    ms = rt.elapsed_ms(start, end)
    assert 0 < ms < 1000
    rt.free(ptr)
    rt.event_destroy(start)
    rt.event_destroy(end)
    rt.stream_destroy(stream)
