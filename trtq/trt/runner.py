"""Running a ``.plan``: deserialize, bind I/O by tensor name, run batches on a CUDA stream, and
time the engine with CUDA events the way trtexec reports it (GPU compute per iteration, and
end-to-end latency including the host↔device copies).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import BackendError
from .builder import make_logger
from .cuda import CudaRuntime


class EngineRunner:
    """``runner(feeds, names)`` → outputs as numpy arrays, like the ONNX Runtime runners."""

    def __init__(self, trt, plan: bytes, rt: CudaRuntime):
        self.trt, self.rt = trt, rt
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"TensorRT cannot deserialize the engine: {self.logger.last_error().splitlines()[0]}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = rt.stream()
        self.buffers: dict[str, tuple[int, int]] = {}  # name → (pointer, bytes), grown when needed, else reused

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.rt.free(ptr)
            ptr, size = self.rt.malloc(max(nbytes, 1)), nbytes
            self.buffers[name] = (ptr, size)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"engine input '{missing[0]}' is not fed (feeds: {', '.join(feeds)})")
        self._staged = []  # host arrays stay alive until the stream is synchronised
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            self._staged.append(array)
            if not self.context.set_input_shape(name, array.shape):
                raise BackendError(f"engine input '{name}': shape {array.shape} is outside the engine's optimization "
                                   "profile; widen tensorrt.profiles for it and rebuild")
            self.rt.htod(self._buffer(name, array.nbytes), array, self.stream)
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = np.empty(shape, dtype=self.dtypes[name])
            self._buffer(name, outs[name].nbytes)
        return outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise BackendError(f"TensorRT failed to run the engine: {self.logger.last_error().splitlines()[0]}")

    def __call__(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        outs = self._prepare(feeds)
        self._execute()
        for name, out in outs.items():
            self.rt.dtoh(out, self.buffers[name][0], self.stream)
        self.rt.synchronize(self.stream)
        return [outs[n] for n in (names or self.output_names)]

    def time(self, feeds: dict[str, np.ndarray], warmup: int, iterations: int, duration_s: float | None = None) -> dict:
        """Per-iteration milliseconds: ``gpu_compute`` (CUDA events around ``execute_async_v3``) and
        ``latency`` (copies in, compute, copies out, synchronised); summarise them with
        :func:`trtq.evaluation.latency.summarize`."""
        for _ in range(warmup):
            self(feeds)
        start, end = self.rt.event(), self.rt.event()
        compute, e2e = [], []
        t_start = time.perf_counter()
        try:
            i = 0
            while i < iterations or (duration_s is not None and time.perf_counter() - t_start < duration_s):
                t0 = time.perf_counter_ns()
                outs = self._prepare(feeds)
                self.rt.record(start, self.stream)
                self._execute()
                self.rt.record(end, self.stream)
                for name, out in outs.items():
                    self.rt.dtoh(out, self.buffers[name][0], self.stream)
                self.rt.synchronize(self.stream)
                e2e.append((time.perf_counter_ns() - t0) / 1e6)
                compute.append(self.rt.elapsed_ms(start, end))
                i += 1
        finally:
            self.rt.event_destroy(start)
            self.rt.event_destroy(end)
        return {"gpu_compute": compute, "latency": e2e}

    def inspect(self) -> str:
        """The engine inspector's JSON (layers, their precisions and formats). With dynamic shapes
        the formats are only known for set shapes, so the inspector gets the execution context
        (call this after a run)."""
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.rt.free(ptr)
        self.buffers.clear()
        if self.stream:
            self.rt.stream_destroy(self.stream)
            self.stream = 0

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
