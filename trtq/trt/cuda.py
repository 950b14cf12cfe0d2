"""CUDA glue: device buffers, copies, streams, events and device facts, through pycuda or,
when pycuda is absent (it does not build without a driver), cuda-python
(``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases). Imported lazily: nothing here loads unless a TensorRT build or run needs the GPU.

Every CUDA failure becomes a one-line :class:`~trtq.errors.BackendError` naming the call.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError

HINT = ("install a CUDA binding with pip install 'trtq[tensorrt-cu12]' or 'trtq[tensorrt-cu13]' (cuda-python of the "
        "driver's CUDA major) on a machine with an NVIDIA driver")


def _import_cudart():
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class CudaRuntime:
    """cuda-python's runtime API: each call returns ``(error, *values)``; errors raise."""

    binding = "cuda-python"

    def __init__(self, cudart):
        self.rt = cudart

    def _call(self, fn: str, *args):
        result = getattr(self.rt, fn)(*args)
        err, values = result[0], result[1:]
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise BackendError(f"CUDA {fn} failed: {getattr(err, 'name', err)} ({text}); check the NVIDIA driver "
                               "and that a GPU is visible (nvidia-smi)")
        return values[0] if len(values) == 1 else (values or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def htod(self, ptr: int, array: np.ndarray, stream: int = 0) -> None:
        a = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream:
            self._call("cudaMemcpyAsync", ptr, a.ctypes.data, a.nbytes, kind, stream)
        else:
            self._call("cudaMemcpy", ptr, a.ctypes.data, a.nbytes, kind)

    def dtoh(self, out: np.ndarray, ptr: int, stream: int = 0) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream:
            self._call("cudaMemcpyAsync", out.ctypes.data, ptr, out.nbytes, kind, stream)
        else:
            self._call("cudaMemcpy", out.ctypes.data, ptr, out.nbytes, kind)

    def stream(self) -> int:
        return int(self._call("cudaStreamCreate"))

    def stream_destroy(self, stream: int) -> None:
        self._call("cudaStreamDestroy", stream)

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", stream)

    def event(self):
        return self._call("cudaEventCreate")

    def event_destroy(self, event) -> None:
        self._call("cudaEventDestroy", event)

    def record(self, event, stream: int) -> None:
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start, end) -> float:
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def device(self) -> dict:
        dev = self._call("cudaGetDevice")
        prop = self._call("cudaGetDeviceProperties", dev)
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        driver = self._call("cudaDriverGetVersion")
        runtime = self._call("cudaRuntimeGetVersion")
        return {"index": int(dev), "name": name, "compute_capability": f"{prop.major}.{prop.minor}",
                "memory_mb": int(prop.totalGlobalMem) >> 20, "driver": _cuda_version(driver),
                "runtime": _cuda_version(runtime), "binding": self.binding}


def _cuda_version(v: int) -> str:
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int


class DeviceAllocator:
    """The feeder's allocator on the GPU: one device buffer per input, reused for every batch."""

    def __init__(self, runtime: CudaRuntime | None = None):
        self.rt = runtime or cuda_runtime()
        self.allocations = 0
        self.frees = 0

    def alloc(self, nbytes: int) -> DeviceBuffer:
        buf = DeviceBuffer(self.rt.malloc(nbytes), nbytes)
        self.allocations += 1
        return buf

    def address(self, handle: DeviceBuffer) -> int:
        return handle.ptr

    def copy_in(self, handle: DeviceBuffer, array: np.ndarray) -> None:
        if array.nbytes > handle.nbytes:
            raise BackendError(f"a batch of {array.nbytes} bytes does not fit its {handle.nbytes}-byte device buffer")
        self.rt.htod(handle.ptr, array)

    def free(self, handle: DeviceBuffer) -> None:
        if handle.ptr:
            self.rt.free(handle.ptr)
            handle.ptr = 0
            self.frees += 1


class PycudaRuntime(CudaRuntime):
    """The same calls through pycuda (its driver API; a context is created on first use)."""

    binding = "pycuda"

    def __init__(self, driver):
        self.drv = driver
        importlib.import_module("pycuda.autoinit")
        self._allocs: dict[int, object] = {}

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def htod(self, ptr: int, array: np.ndarray, stream: int = 0) -> None:
        self.drv.memcpy_htod(ptr, np.ascontiguousarray(array))

    def dtoh(self, out: np.ndarray, ptr: int, stream: int = 0) -> None:
        self.drv.memcpy_dtoh(out, ptr)

    def stream(self) -> int:
        s = self.drv.Stream()
        self._allocs[s.handle] = s
        return s.handle

    def stream_destroy(self, stream: int) -> None:
        self._allocs.pop(stream, None)

    def synchronize(self, stream: int) -> None:
        self._allocs[stream].synchronize() if stream in self._allocs else self.drv.Context.synchronize()

    def event(self):
        return self.drv.Event()

    def event_destroy(self, event) -> None:
        pass

    def record(self, event, stream: int) -> None:
        event.record(self._allocs.get(stream))

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def device(self) -> dict:
        dev = self.drv.Context.get_device()
        major, minor = dev.compute_capability()
        return {"index": 0, "name": dev.name(), "compute_capability": f"{major}.{minor}",
                "memory_mb": dev.total_memory() >> 20, "driver": _cuda_version(self.drv.get_driver_version()),
                "runtime": ".".join(map(str, self.drv.get_version()[:2])), "binding": self.binding}


def cuda_runtime() -> CudaRuntime:
    """pycuda if it imports, else cuda-python (``TRTQ_CUDA_BINDING=cuda-python`` or ``pycuda``
    picks one); a one-line error when neither does."""
    choice = os.environ.get("TRTQ_CUDA_BINDING", "")
    if choice not in ("", "pycuda", "cuda-python"):
        raise BackendError(f"TRTQ_CUDA_BINDING={choice!r}: use 'pycuda' or 'cuda-python'")
    if choice != "cuda-python":
        try:
            driver = importlib.import_module("pycuda.driver")
        except ImportError:
            if choice == "pycuda":
                raise BackendError(f"TRTQ_CUDA_BINDING=pycuda, but pycuda does not import; {HINT}") from None
        else:
            try:
                return PycudaRuntime(driver)
            except Exception as exc:  # noqa: BLE001 - pycuda.autoinit raises driver errors of its own types
                raise BackendError(f"pycuda cannot create a CUDA context ({str(exc).splitlines()[0]}); {HINT}") from None
    rt = _import_cudart()
    if rt is not None:
        return CudaRuntime(rt)
    raise BackendError(f"no CUDA binding: neither pycuda nor cuda-python imports; {HINT}")
