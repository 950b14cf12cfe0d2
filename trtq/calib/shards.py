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

from ..data.sources import batches, open_source, planned_count, prefetch
from ..job import DataSpec
from ..model.load import InputSpec, input_specs
from ..progress import Progress
from ..runtime import ort_native
from .collect import collect, tensor_elements
from .stats import ExactHistogram, TensorStats, merge_all

ShardMap = Callable[[Callable, list[tuple]], list]  # (function, argument tuples) → results, in order


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


def _layout(exposures: list[ort_native.Exposure], native: bool) -> dict:
    """How the activations were read: how many tensors in ORT's NCHWc layout, and why none were."""
    blocked = sum(len(e.blocks) for e in exposures)
    total = sum(len(e.outputs) for e in exposures)
    fallback = next((e.fallback for e in exposures if e.fallback), None) if native else "native layout turned off"
    return {"nchwc_tensors": blocked, "nchw_tensors": total - blocked, "fallback": fallback if not blocked else None}


def collect_range(model: onnx.ModelProto, groups: list[list[str]], axes: dict[str, int], spec: DataSpec,
                  inputs: list[InputSpec], start: int, count: int | None, digest,
                  progress: Progress | None = None, native: bool = True,
                  exact: dict[str, float] | None = None, make: Callable[[str], object] | None = None,
                  label: str = "calibrating") -> tuple[dict, int, dict]:
    """Statistics of the samples ``start … start+count-1`` (``count`` None: to the end), one pass
    over them per tensor group; ``digest.update`` gets each sample's digest on the first pass.
    Returns (statistics, samples, layout). A single-process calibration is one such range.
    ``native`` False reads every tensor in NCHW order (the same statistics, more slowly).
    ``exact``: the second pass instead — each tensor's :class:`ExactHistogram` over [0, its amax].
    ``make(tensor)``: any other folder with ``TensorStats.update``'s signature, in a pass of its own."""
    if exact is not None:
        make, label = (lambda t: ExactHistogram(exact[t])), "exact histograms"
    first_pass = make is None
    progress = progress or Progress()
    stats: dict = {}
    samples = 0
    exposures = []
    for gi, group in enumerate(groups):
        source = open_source(spec, inputs, "calibration")  # a fresh pass over the data
        # exposed in ORT's own NCHWc layout where it can be: no reorder copies
        exposure = ort_native.expose(model, group, axes, native=native)
        exposures.append(exposure)
        runner = ort_native.ExposedRunner(exposure)
        title = label if len(groups) == 1 else f"{label} (pass {gi + 1}/{len(groups)})"
        seen = [0]
        with progress.task(title, planned_count(source, start, count), "samples") as advance:
            def counted(n: int) -> None:
                seen[0] += n
                advance(n)

            part = {t: TensorStats(axes.get(t)) if first_pass else make(t) for t in group}
            first = gi == 0 and first_pass
            collect(runner, group, prefetch(batches(source, inputs, spec.batch_size, "calibration", start, count,
                                                    digest if first else None, note=progress.note if first else None)),
                    on_batch=counted, stats=part, stride=spec.histogram_stride, sizes=tensor_elements(model, group),
                    blocks=exposure.blocks)
        stats.update(part)
        samples = samples or seen[0]
        del runner
    return stats, samples, _layout(exposures, native)


def collect_shard(spec_json: dict, model_bytes: bytes, groups: list[list[str]], axes: dict[str, int],
                  start: int, count: int, exact: dict[str, float] | None = None) -> dict:
    """One shard's statistics (``exact``: its exact histograms, the second pass). Runs in any
    process: everything it needs comes in as plain values (``spec_json``: the job's calibration section)."""
    spec = DataSpec.model_validate(spec_json)
    model = onnx.load_from_string(model_bytes)
    digests = _Digests()
    stats, _, layout = collect_range(model, groups, axes, spec, input_specs(model), start, count, digests,
                                     exact=exact)
    return {"stats": stats, "digests": digests.items, "layout": layout}


def merge_exact(results: list[dict]) -> dict[str, ExactHistogram]:
    """The shards' exact histograms (second-pass results), summed per tensor."""
    out: dict[str, ExactHistogram] = {}
    for r in results:
        for name, h in r["stats"].items():
            out[name] = out[name].merge(h) if name in out else h.copy()
    return out


def merge_shards(results: list[dict]) -> tuple[dict[str, TensorStats], str, int, dict]:
    """(merged statistics, data fingerprint, samples, layout) of shard results given in data order."""
    digest = hashlib.sha256()
    for r in results:
        for d in r["digests"]:
            digest.update(d)
    layouts = [r["layout"] for r in results]
    layout = {"nchwc_tensors": layouts[0]["nchwc_tensors"], "nchw_tensors": layouts[0]["nchw_tensors"],
              "fallback": next((x["fallback"] for x in layouts if x["fallback"]), None)}
    return (merge_all([r["stats"] for r in results]), digest.hexdigest(), sum(len(r["digests"]) for r in results),
            layout)
