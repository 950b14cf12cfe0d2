"""The calibrator's core, free of TensorRT and CUDA: it pulls batches from a data stream, checks
them against the engine's inputs, copies each into one reused buffer per input and hands out
the buffers' addresses in the order TensorRT asks for them; it also serves and stores the
calibration cache. The TensorRT calibrator classes (:mod:`trtq.trt.calibrators`) only forward
to it, and the buffers come from an allocator: :class:`HostAllocator` (numpy, for tests and
CPU use) or a CUDA allocator (:mod:`trtq.trt.cuda`).

TensorRT calls ``get_batch`` from C++, where a Python exception cannot travel; so the feeder
catches any error there, frees its buffers, returns ``None`` (TensorRT then stops
calibrating) and keeps the error for :meth:`CalibrationFeeder.raise_pending` to re-raise
once the build call has returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..artifacts import write_atomic
from ..errors import DataError, TrtqError


@dataclass(frozen=True)
class FeedSpec:
    """One engine input as calibration fills it: its name, the full batch shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Allocator(Protocol):
    """Where the batch buffers live. ``alloc`` returns a handle; ``address`` its pointer."""

    def alloc(self, nbytes: int) -> object: ...

    def address(self, handle: object) -> int: ...

    def copy_in(self, handle: object, array: np.ndarray) -> None: ...

    def free(self, handle: object) -> None: ...


class HostAllocator:
    """Host memory (numpy). Counts allocations and frees so tests can check reuse and cleanup."""

    def __init__(self) -> None:
        self.allocations = 0
        self.frees = 0
        self.live: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> np.ndarray:
        buf = np.empty(nbytes, dtype=np.uint8)
        self.allocations += 1
        self.live[id(buf)] = buf
        return buf

    def address(self, handle: np.ndarray) -> int:
        return int(handle.ctypes.data)

    def copy_in(self, handle: np.ndarray, array: np.ndarray) -> None:
        handle[: array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def free(self, handle: np.ndarray) -> None:
        self.frees += 1
        self.live.pop(id(handle), None)


class CalibrationFeeder:
    """Serve ``batches`` (mappings input name → array of exactly ``spec.shape``) to TensorRT.

    ``cache_in``: bytes offered to TensorRT by ``read_cache`` (trtq's own ranges), or None.
    ``cache_out``: where ``write_cache`` stores the cache TensorRT produced (written atomically).
    ``cache_only``: True when TensorRT must take ``cache_in`` and never calibrate itself; a
    request for batches then means TensorRT rejected the cache (see :attr:`cache_rejected`).
    """

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], specs: Sequence[FeedSpec], allocator: Allocator,
                 cache_in: bytes | None = None, cache_out: Path | None = None, cache_only: bool = False):
        if cache_only and cache_in is None:
            raise ValueError("cache_only needs cache_in")
        self._batches: Iterator[Mapping[str, np.ndarray]] | None = iter(batches)
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise ValueError("duplicate input names")
        self.allocator = allocator
        self.cache_in = cache_in
        self.cache_out = Path(cache_out) if cache_out is not None else None
        self.cache_only = cache_only
        self.buffers: dict[str, object] = {}
        self.batches_served = 0
        self.cache_rejected = False
        self.cache_written: bytes | None = None
        self.error: BaseException | None = None
        batch_sizes = {s.shape[0] for s in specs if s.shape}
        self.batch_size = batch_sizes.pop() if len(batch_sizes) == 1 else 1

    # -- the calibrator protocol -------------------------------------------------------------
    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Addresses of the next batch, one per name in the order of ``names``; None at the end."""
        if self._batches is None:
            return None
        try:
            if self.cache_only:
                self.cache_rejected = True
                self._finish()
                return None
            unknown = [n for n in names if n not in self.specs]
            if unknown:
                raise DataError(f"TensorRT asked for input '{unknown[0]}', which the calibration data does not feed "
                                f"(it feeds {', '.join(self.specs)}); check the model's input names")
            batch = next(self._batches, None)
            if batch is None:
                self._finish()
                return None
            pointers = []
            for name in names:
                array = self._check(name, batch)
                if name not in self.buffers:
                    self.buffers[name] = self.allocator.alloc(self.specs[name].nbytes)
                self.allocator.copy_in(self.buffers[name], array)
                pointers.append(self.allocator.address(self.buffers[name]))
            self.batches_served += 1
            return pointers
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by raise_pending
            self.error = exc
            self._finish()
            return None

    def read_cache(self) -> bytes | None:
        return self.cache_in

    def write_cache(self, cache: bytes | memoryview) -> None:
        data = bytes(cache)
        self.cache_written = data
        if self.cache_out is not None:
            write_atomic(self.cache_out, data)

    # -- lifetime ------------------------------------------------------------------------------
    def _check(self, name: str, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        spec = self.specs[name]
        if name not in batch:
            raise DataError(f"calibration batch {self.batches_served + 1} has no input '{name}' "
                            f"(it has {', '.join(batch) or 'nothing'})")
        array = batch[name]
        if tuple(array.shape) != spec.shape:
            raise DataError(f"calibration batch {self.batches_served + 1}, input '{name}': shape {tuple(array.shape)}, "
                            f"but the engine calibrates at {spec.shape}; set calibration.batch_size to {spec.shape[0]} "
                            "or the calibration shape (tensorrt.calibration_shapes) to match the data")
        if array.dtype != spec.dtype:
            raise DataError(f"calibration batch {self.batches_served + 1}, input '{name}': dtype {array.dtype}, "
                            f"but the engine input is {np.dtype(spec.dtype)}; convert it in the loader")
        return array

    def _finish(self) -> None:
        """The stream is over (or failed): free every buffer and drop the data iterator."""
        for handle in self.buffers.values():
            self.allocator.free(handle)
        self.buffers.clear()
        close = getattr(self._batches, "close", None)
        self._batches = None
        if close is not None:
            close()

    def close(self) -> None:
        self._finish()

    def raise_pending(self) -> None:
        """Re-raise an error that happened inside ``get_batch`` (where TensorRT swallowed it)."""
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, TrtqError):
                raise err
            raise TrtqError(f"calibration failed while feeding TensorRT: {err.__class__.__name__}: {err}") from err

    def __enter__(self) -> CalibrationFeeder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def full_batches(stream: Iterable[Mapping[str, np.ndarray]], batch_size: int, dropped: list[int]) -> Iterator[dict]:
    """Pass on batches of exactly ``batch_size`` samples; a short last batch is dropped (TensorRT
    calibrates at a fixed batch) and its size added to ``dropped``."""
    for feeds in stream:
        n = len(next(iter(feeds.values())))
        if n != batch_size:
            dropped.append(n)
            continue
        yield dict(feeds)
