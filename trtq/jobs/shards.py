"""Calibration over a range of samples (:func:`collect_range`; a single-process calibration is
one range), and calibration split into shards: contiguous runs of samples whose statistics are
collected separately — in this process, or as Ray tasks under ``trtq run --ray`` — and merged. The
statistics are exactly mergeable and the data fingerprint is a hash over per-sample digests, so
a sharded calibration gives the ranges and fingerprint of a single pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import onnx

from ..backends import ort_native
from ..calib.collect import collect, tensor_elements
from ..calib.stats import TensorStats
from ..data.sources import batches, open_source, planned_count, prefetch
from ..model import InputSpec, input_specs
from ..progress import Progress
from .schema import DataSpec, Job

ShardMap = Callable[[Callable, list[tuple]], list]


def local_map(fn: Callable, args: list[tuple]) -> list:
    return [fn(*a) for a in args]


def bounds(skip: int, count: int, shards: int) -> list[tuple[int, int]]:
    """(first sample, number of samples) of each shard: contiguous, sizes differing by at most one."""
    shards = max(1, min(shards, count))
    base, extra = divmod(count, shards)
    out, start = [], skip
    for k in range(shards):
        n = base + (1 if k < extra else 0)
        out.append((start, n))
        start += n
    return out


class _Digests:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def update(self, d: bytes) -> None:
        self.items.append(d)


def collect_range(model: onnx.ModelProto, groups: list[list[str]], axes: dict[str, int], spec: DataSpec,
                  inputs: list[InputSpec], start: int, count: int | None, digest,
                  progress: Progress | None = None, native: bool = True) -> tuple[dict[str, TensorStats], int]:
    """Statistics of the samples ``start … start+count-1`` (``count`` None: to the end), one pass
    over them per tensor group; ``digest.update`` gets each sample's digest on the first pass.
    Returns (statistics, samples). A single-process calibration is one such range. ``native``
    False reads every tensor in NCHW order (the same statistics, more slowly)."""
    progress = progress or Progress()
    stats: dict[str, TensorStats] = {}
    samples = 0
    for gi, group in enumerate(groups):
        source = open_source(spec, inputs, "calibration")  # a fresh pass over the data
        # exposed in ORT's own NCHWc layout where it can be: no reorder copies
        exposure = ort_native.expose(model, group, axes, native=native)
        runner = ort_native.ExposedRunner(exposure)
        label = "calibrating" if len(groups) == 1 else f"calibrating (pass {gi + 1}/{len(groups)})"
        seen = [0]
        with progress.task(label, planned_count(source, start, count)) as advance:
            def counted(n: int) -> None:
                seen[0] += n
                advance(n)

            part = {t: TensorStats(axes.get(t)) for t in group}
            collect(runner, group, prefetch(batches(source, inputs, spec.batch_size, "calibration", start, count,
                                                    digest if gi == 0 else None)),
                    on_batch=counted, stats=part, stride=spec.histogram_stride, sizes=tensor_elements(model, group),
                    blocks=exposure.blocks)
        stats.update(part)
        samples = samples or seen[0]
        del runner
    return stats, samples


def collect_shard(job_json: dict, model_bytes: bytes, groups: list[list[str]], axes: dict[str, int],
                  start: int, count: int) -> dict:
    """One shard's statistics. Runs in any process: everything it needs comes in as plain values."""
    job = Job.model_validate(job_json)
    model = onnx.load_from_string(model_bytes)
    digests = _Digests()
    stats, _ = collect_range(model, groups, axes, job.calibration, input_specs(model), start, count, digests)
    return {"stats": stats, "digests": digests.items}


def merge_shards(results: list[dict]) -> tuple[dict[str, TensorStats], str, int]:
    """(merged statistics, data fingerprint, samples) of shard results given in data order."""
    merged: dict[str, TensorStats] = {}
    digest = hashlib.sha256()
    samples = 0
    for r in results:
        for t, st in r["stats"].items():
            merged[t] = st if t not in merged else merged[t].merge(st)
        for d in r["digests"]:
            digest.update(d)
        samples += len(r["digests"])
    return merged, digest.hexdigest(), samples
