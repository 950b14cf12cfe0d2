"""Streaming collection: run the FP32 model batch by batch and fold the tensors to be
quantized into :class:`TensorStats`; each batch's activations are dropped after folding."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from ..errors import DataError
from ..runtime.onnxruntime import RunError
from .stats import TensorStats

Runner = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]


def tensor_elements(model: onnx.ModelProto, tensors: list[str]) -> dict[str, int | None]:
    """Elements per sample of each tensor from inferred shapes (None where a dim is unknown)."""
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    out: dict[str, int | None] = {}
    for t in tensors:
        vi = infos.get(t)
        dims = vi.type.tensor_type.shape.dim if vi is not None else None
        if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
            out[t] = None
        else:
            out[t] = int(np.prod([d.dim_value for d in dims[1:]], dtype=np.int64))
    return out


def group_tensors(model: onnx.ModelProto, tensors: list[str], batch_size: int, budget_bytes: int) -> list[list[str]]:
    """Split ``tensors`` (in graph order) into groups whose activations for one batch fit the
    budget; each group costs one pass over the data. Tensors of unknown size count as the
    largest known one. A single tensor over budget gets a group of its own."""
    sizes = tensor_elements(model, tensors)
    known = [v for v in sizes.values() if v is not None]
    fallback = max(known) if known else 1 << 20
    groups: list[list[str]] = [[]]
    used = 0
    for t in tensors:
        need = 4 * batch_size * (sizes[t] if sizes[t] is not None else fallback)
        if groups[-1] and used + need > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += need
    return groups


def balance(tensors: list[str], sizes: dict[str, int | None], parts: int) -> list[list[str]]:
    """Split ``tensors`` into ``parts`` lists of about equal total size (largest first, each to the
    lightest list), so each folding thread gets one task per batch."""
    out: list[list[str]] = [[] for _ in range(max(1, parts))]
    load = [0] * len(out)
    for t in sorted(tensors, key=lambda t: -(sizes.get(t) or 0)):
        i = load.index(min(load))
        out[i].append(t)
        load[i] += sizes.get(t) or 1
    return [p for p in out if p]


def collect(run: Runner, tensors: list[str], batches: Iterable, on_batch: Callable[[int], None] | None = None,
            stats: dict[str, TensorStats] | None = None, stride: int = 1, workers: int = 2,
            sizes: dict[str, int | None] | None = None, blocks: dict[str, int] | None = None
            ) -> dict[str, TensorStats]:
    """Fold every batch's values of ``tensors`` into per-tensor statistics.

    ``run(feeds, names)`` returns the arrays of ``names`` for one batch (tensors that are
    graph inputs are taken from the feeds directly). The tensors of a batch are folded on
    ``workers`` threads (the compiled kernel runs without the GIL), each thread taking a fixed
    share of the tensors balanced by ``sizes`` (elements per sample); each tensor's statistics
    are only ever touched by one thread, in batch order. ``blocks``: tensors whose values
    ``run`` returns in ONNX Runtime's NCHWc order, with their block size.
    """
    stats = {t: TensorStats() for t in tensors} if stats is None else stats
    blocks = blocks or {}
    shares = balance(tensors, sizes or {}, workers)
    pool = ThreadPoolExecutor(len(shares)) if len(shares) > 1 else None
    values: dict[str, np.ndarray] = {}

    def fold(share: list[str]) -> None:
        for t in share:
            stats[t].update(values[t], stride, t, blocks.get(t, 0))

    try:
        for batch in batches:
            to_run = [t for t in tensors if t not in batch.feeds]
            try:
                values = dict(zip(to_run, run(batch.feeds, to_run))) if to_run else {}
            except RunError as exc:
                raise DataError(f"calibration: {batch.describe()}: {exc}") from None
            values.update({t: batch.feeds[t] for t in tensors if t in batch.feeds})
            if pool is None:
                for share in shares:
                    fold(share)
            else:
                list(pool.map(fold, shares))
            values = {}
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        if pool is not None:
            pool.shutdown()
    return stats
