"""The calibration stage's one entry point: :func:`calibrate` returns a :class:`Calibration` —
statistics, ranges, per-channel input means and what the report says about them — whether the
statistics were collected in this process, in shards (here or as Ray tasks), or reused from
the store of an earlier build.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import open_source, planned_count
from ..errors import JobError
from ..job import CalibratorSpec, DataSpec
from ..model.prepare import PreparedModel
from ..progress import Progress
from . import kernels, shards
from . import store as stats_store
from .collect import group_tensors
from .methods import candidate_methods, compute_ranges, describe, make_method, needs
from .ranges import Range
from .stats import EXACT_HISTOGRAM, TensorStats


@dataclass
class Calibration:
    stats: dict[str, TensorStats]
    ranges: dict[str, Range]
    means: dict[str, np.ndarray]  # tensor → per-channel mean of a weighted op's input (bias correction)
    info: dict  # the report's ``calibration`` section
    # calibrator.method auto: method name → (its description, its ranges), all from these statistics
    candidates: dict[str, tuple[dict, dict[str, Range]]] = field(default_factory=dict)


def _shard_bounds(prepared: PreparedModel, spec: DataSpec) -> list[tuple[int, int]]:
    count = planned_count(open_source(spec, prepared.inputs, "calibration"), spec.skip, spec.max_samples)
    if count is None:
        raise JobError("calibration.shards: sharding needs a data source whose size is known up front (an image "
                       "folder or .npy/.npz) or calibration.max_samples; set shards: 1 for a loader")
    return shards.bounds(spec.skip, count, spec.shards)


def _collect_sharded(prepared: PreparedModel, spec: DataSpec, groups: list[list[str]], axes: dict,
                     progress: Progress, shard_map: shards.ShardMap) -> tuple[dict, dict]:
    parts = _shard_bounds(prepared, spec)
    t0 = time.perf_counter()
    spec_json = spec.model_dump(mode="json", by_alias=True)
    model_bytes = prepared.model.SerializeToString()
    with progress.task(f"calibrating ({len(parts)} shards)", len(parts), "shards") as advance:
        results = shard_map(shards.collect_shard, [(spec_json, model_bytes, groups, axes, start, n)
                                                   for start, n in parts])
        advance(len(parts))
    merged, fingerprint, samples, layout = shards.merge_shards(results)
    return merged, {"samples": samples, "collect_seconds": time.perf_counter() - t0, "passes": len(groups),
                    "shards": len(parts), "data_fingerprint": fingerprint, "layout": layout}


def collect_statistics(prepared: PreparedModel, spec: DataSpec, progress: Progress,
                       shard_map: shards.ShardMap | None = None) -> tuple[dict[str, TensorStats], dict]:
    """Run the FP32 model over the calibration data; one pass per tensor group (per shard)."""
    plan = prepared.plan
    groups = group_tensors(prepared.model, plan.calibrated, spec.batch_size, spec.memory_budget_mb << 20)
    axes = plan.channel_axes()
    if spec.shards > 1:
        return _collect_sharded(prepared, spec, groups, axes, progress, shard_map or shards.local_map)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    stats, samples, layout = shards.collect_range(prepared.model, groups, axes, spec, prepared.inputs, spec.skip,
                                                  spec.max_samples, digest, progress)
    return stats, {"samples": samples, "collect_seconds": time.perf_counter() - t0, "passes": len(groups),
                   "data_fingerprint": digest.hexdigest(), "layout": layout}


def collect_exact(prepared: PreparedModel, spec: DataSpec, stats: dict[str, TensorStats], progress: Progress,
                  shard_map: shards.ShardMap | None = None) -> float:
    """The second pass (for methods needing ``EXACT_HISTOGRAM``): each tensor's exact 2048-bin
    histogram over [0, its max |x|], attached to ``stats`` where missing — in shards when the
    first pass was. Returns its seconds (0 when nothing was missing)."""
    todo = {t: st.absmax for t, st in stats.items() if st.absmax > 0 and st.exact_histogram() is None}
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    order = [t for t in prepared.plan.calibrated if t in todo] + sorted(set(todo) - set(prepared.plan.calibrated))
    groups = group_tensors(prepared.model, order, spec.batch_size, spec.memory_budget_mb << 20)
    axes = prepared.plan.channel_axes()
    if spec.shards > 1:
        spec_json = spec.model_dump(mode="json", by_alias=True)
        model_bytes = prepared.model.SerializeToString()
        parts = _shard_bounds(prepared, spec)
        with progress.task(f"exact histograms ({len(parts)} shards)", len(parts), "shards") as advance:
            results = (shard_map or shards.local_map)(shards.collect_shard, [
                (spec_json, model_bytes, groups, axes, start, n, todo) for start, n in parts])
            advance(len(parts))
        exact = shards.merge_exact(results)
    else:
        exact, _, _ = shards.collect_range(prepared.model, groups, axes, spec, prepared.inputs, spec.skip,
                                           spec.max_samples, None, progress, exact=todo)
    for t, h in exact.items():
        stats[t].attach_exact(h, t)
    return time.perf_counter() - t0


def calibrate(prepared: PreparedModel, spec: DataSpec, calibrator: CalibratorSpec, progress: Progress | None = None,
              store_root: Path | None = None, reuse: bool = True,
              shard_map: shards.ShardMap | None = None) -> Calibration:
    """Statistics of ``spec``'s data for the plan's activations (from ``store_root``'s store when
    ``reuse`` and they match; stored there otherwise), then the ranges ``calibrator`` picks."""
    progress = progress or Progress()
    source = open_source(spec, prepared.inputs, "calibration")
    t0 = time.perf_counter()
    key = None
    if store_root is not None:
        feeding = [[i.name, list(i.shape), str(i.dtype), i.batch_axis,
                     None if i.constant is None else i.constant.tolist()] for i in prepared.inputs]
        if prepared.cross_layer and prepared.cross_layer["pairs"]:  # so do the cross-layer equalized model's
            feeding.append({"cross_layer": prepared.cross_layer["scales_sha256"]})
        if prepared.equalized:  # the equalized model's values differ from the file's
            feeding.append({t: hashlib.sha256(s.tobytes()).hexdigest() for t, s in sorted(prepared.equalized.items())})
        key = stats_store.stats_key(prepared.sha256, prepared.plan.calibrated, spec.model_dump(mode="json"),
                                    source.files, feeding)
    stored = stats_store.load(store_root, key) if (reuse and key) else None
    if stored is not None:
        stats, collected = stored
        progress.note(f"reusing calibration statistics of {collected['samples']} samples "
                      f"({stats_store.path(store_root, key)}); --force collects them again")
    else:
        if kernels.needs_compiling():
            progress.note("compiling the statistics kernels (once per install, about 10 s)…")
        stats, collected = collect_statistics(prepared, spec, progress, shard_map)
    method = make_method(calibrator)
    auto = calibrator.method == "auto" and calibrator.class_ is None
    trying = candidate_methods(calibrator) if auto else {}
    wanted = needs(method, *trying.values())  # auto: entropy among the candidates wants the exact histograms too
    exact_seconds = collect_exact(prepared, spec, stats, progress, shard_map) if EXACT_HISTOGRAM in wanted else 0.0
    if key and (stored is None or exact_seconds):
        stats_store.save(store_root, key, stats, collected)
    t1 = time.perf_counter()
    ranges = compute_ranges(stats, method)
    info = {"method": describe(method), "samples": collected["samples"], "seconds": time.perf_counter() - t0,
            "ranges_seconds": time.perf_counter() - t1, "collect_seconds": collected["collect_seconds"],
            "exact_histogram_seconds": exact_seconds,
            "passes": collected["passes"], "shards": collected.get("shards", 1),
            "reused_statistics": stored is not None,
            "tensors": len(ranges), "data_fingerprint": collected["data_fingerprint"], "source": source.description,
            "batch_size": spec.batch_size, "skip": spec.skip, "activation_layout": collected.get("layout")}
    means = {t: m for t, st in stats.items() if (m := st.channel_mean()) is not None}
    candidates = {name: (describe(m), compute_ranges(stats, m)) for name, m in trying.items()}
    return Calibration(stats, ranges, means, info, candidates)
