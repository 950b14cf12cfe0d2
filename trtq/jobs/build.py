"""``trtq build``: the stages of one job, from the validated :class:`Job` to the report.

    model → calibration statistics (streamed) → ranges → Q/DQ models + cache → engine → evaluation → report
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..backends import onnxruntime as ort_backend
from ..backends import tensorrt as trt_backend
from ..calib import cache as trt_cache
from ..calib import store as stats_store
from ..calib.collect import group_tensors
from ..calib.methods import compute_ranges, describe, make_method
from ..data.sources import Source, batches, open_source, planned_count
from ..errors import JobError, ModelError
from ..model import InputSpec, input_specs, load_model, output_names
from ..progress import Progress
from ..quant.precision import cast_nodes_fp16
from ..quant.qdq import QuantPlan, insert_qdq, name_nodes, plan_quantization
from ..quant.weights import QMAX_BY_BITS
from ..report.writer import write_json, write_markdown
from ..scales import safe_amax
from .evaluation import evaluate
from . import shards
from .fingerprint import file_sha256
from .output import staged_output
from .schema import Job

QDQ_MODEL = "model.int8.onnx"
ORT_ENGINE = "engine.ort.onnx"
CACHE = "calibration.cache"
RANGES = "ranges.json"
MEANS = "channel_means.npz"  # per-channel input means behind bias correction


@dataclass
class BuildResult:
    out_dir: Path
    report: dict


def _check_batch_sizes(job: Job, inputs: list[InputSpec]) -> None:
    for spec in inputs:
        fixed = spec.fixed_batch
        if fixed is None:
            continue
        sizes = [("calibration.batch_size", job.calibration.batch_size)]
        if job.evaluation is not None:
            sizes.append(("evaluation.batch_size", job.evaluation.batch_size))
            sizes += [("evaluation.latency.batch_sizes", b) for b in job.evaluation.latency.batch_sizes]
        for key, size in sizes:
            if size != fixed:
                raise JobError(f"{key}: model input '{spec.name}' has a fixed batch of {fixed}; set {key} to {fixed} "
                               "(or export the model with a dynamic batch dimension)")


def _collect_sharded(job: Job, model: onnx.ModelProto, groups: list[list[str]], axes: dict, inputs: list[InputSpec],
                     progress: Progress, shard_map) -> tuple[dict, dict]:
    spec = job.calibration
    count = planned_count(open_source(spec, inputs, "calibration"), spec.skip, spec.max_samples)
    if count is None:
        raise JobError("calibration.shards: sharding needs a data source whose size is known up front (an image "
                       "folder or .npy/.npz) or calibration.max_samples; set shards: 1 for a loader")
    parts = shards.bounds(spec.skip, count, spec.shards)
    t0 = time.perf_counter()
    job_json = job.model_dump(mode="json", by_alias=True)
    model_bytes = model.SerializeToString()
    with progress.task(f"calibrating ({len(parts)} shards)", len(parts)) as advance:
        results = shard_map(shards.collect_shard, [(job_json, model_bytes, groups, axes, start, n)
                                                   for start, n in parts])
        advance(len(parts))
    merged, fingerprint, samples = shards.merge_shards(results)
    return merged, {"samples": samples, "collect_seconds": time.perf_counter() - t0, "passes": len(groups),
                    "shards": len(parts), "data_fingerprint": fingerprint}


def _collect_stats(job: Job, model: onnx.ModelProto, plan: QuantPlan, inputs: list[InputSpec],
                   progress: Progress, shard_map=None) -> tuple[dict, dict]:
    """Run the FP32 model over the calibration data; one pass per tensor group (per shard)."""
    spec = job.calibration
    groups = group_tensors(model, plan.activations, spec.batch_size, spec.memory_budget_mb << 20)
    axes = plan.channel_axes()
    if spec.shards > 1:
        return _collect_sharded(job, model, groups, axes, inputs, progress, shard_map or shards.local_map)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    stats, samples = shards.collect_range(model, groups, axes, spec, inputs, spec.skip, spec.max_samples, digest,
                                          progress)
    info = {"samples": samples, "collect_seconds": time.perf_counter() - t0, "passes": len(groups),
            "data_fingerprint": digest.hexdigest()}
    return stats, info


def _calibrate(job: Job, model: onnx.ModelProto, plan: QuantPlan, inputs: list[InputSpec], source: Source,
               progress: Progress, root: Path, model_sha: str, reuse: bool, shard_map=None) -> tuple[dict, dict, dict]:
    """(ranges, report info, per-channel input means for bias correction)."""
    spec = job.calibration
    t0 = time.perf_counter()
    key = stats_store.stats_key(model_sha, plan.activations, spec.model_dump(mode="json"), source.files)
    stored = stats_store.load(root, key) if (reuse and key) else None
    if stored is not None:
        stats, collected = stored
        progress.note(f"reusing calibration statistics of {collected['samples']} samples "
                      f"({root / stats_store.FOLDER / key}.npz); --force collects them again")
    else:
        stats, collected = _collect_stats(job, model, plan, inputs, progress, shard_map)
        if key:
            stats_store.save(root, key, stats, collected)
    t1 = time.perf_counter()
    method = make_method(job.calibrator)
    ranges = compute_ranges(stats, method)
    info = {"method": describe(method), "samples": collected["samples"], "seconds": time.perf_counter() - t0,
            "ranges_seconds": time.perf_counter() - t1, "collect_seconds": collected["collect_seconds"],
            "passes": collected["passes"], "shards": collected.get("shards", 1), "reused_statistics": stored is not None, "tensors": len(ranges),
            "data_fingerprint": collected["data_fingerprint"], "source": source.description,
            "batch_size": spec.batch_size, "skip": spec.skip}
    means = {t: m for t, st in stats.items() if (m := st.channel_mean()) is not None}
    return ranges, info, means


def _write_ranges(stage: Path, ranges: dict, info: dict, model_sha: str, job: Job) -> None:
    doc = {
        "calibrator": info["method"],
        "data_fingerprint": info["data_fingerprint"],
        "samples": info["samples"],
        "model_sha256": model_sha,
        "tensors": {k: {**v, "scale": safe_amax(v["amax"]) / 127.0} for k, v in ranges.items()},
    }
    (stage / RANGES).write_text(json.dumps(doc, indent=2) + "\n")
    cache = trt_cache.from_ranges({k: v["amax"] for k, v in ranges.items()},
                                  job.calibrator.cache_version, job.calibrator.cache_algorithm)
    (stage / CACHE).write_text(trt_cache.dumps(cache))


def _engine_extras(engine: dict) -> list[str]:
    if engine.get("kind") != "tensorrt":
        return []
    extras = [engine["path"] + ".json"]
    if engine.get("calibration", {}).get("source") == "tensorrt":
        extras.append(trt_backend.TRT_CACHE)
    return extras


def trt_evaluation(job: Job, model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
                   inputs: list[InputSpec], stage: Path, progress: Progress, engine: dict) -> dict:
    """Evaluate ``engine.plan``: accuracy against FP32 (ONNX Runtime), latency against a strongly
    typed FP32 engine of the same model on the same GPU (CUDA events), and the engine inspector's
    view of which layers run in INT8."""
    from ..evaluate.latency import summarize
    from ..trt.inspect import summarize as summarize_layers

    lspec = job.evaluation.latency
    with trt_backend.load_runner(stage / engine["path"]) as int8, \
            trt_backend.fp32_runner(model, stage, job) as fp32_trt:
        gpu: dict = {"fp32": {}, "int8": {}}

        def timer(feeds):
            bs = len(next(iter(feeds.values())))
            out = {}
            for side, runner in (("fp32", fp32_trt), ("int8", int8)):
                t = runner.time(feeds, lspec.warmup, lspec.iterations, lspec.duration_s)
                gpu[side][str(bs)] = summarize(t["gpu_compute"], bs)
                out[side] = t["latency"]
            return out

        result = evaluate(job, model, qdq_model, plan, int8, inputs, stage, progress, timer)
        engine["inspection"] = summarize_layers(int8.inspect())  # after runs: input shapes are set
    result["gpu_compute"] = gpu
    return result


def build(job: Job, out_root: Path | None = None, progress: Progress | None = None, reuse: bool = True,
          shard_map=None) -> BuildResult:
    """Build one job into ``<out_root>/<job.name>``. ``shard_map(fn, args)`` runs the calibration
    shards (``calibration.shards``): by default one after another in this process."""
    progress = progress or Progress()
    target = job.quantization.target
    if target == "tensorrt":
        trt_backend.check_job(job, trt_backend.require_tensorrt())
    model = load_model(job.model, job.input_shapes)
    name_nodes(model)
    inputs = input_specs(model)
    _check_batch_sizes(job, inputs)
    plan = plan_quantization(model, job.quantization.exclude_ops, job.quantization.exclude_nodes)
    if not plan.nodes:
        raise ModelError(f"{job.model}: no weighted op (Conv, ConvTranspose, Gemm, MatMul with constant weights) "
                         "to quantize; check quantization.exclude_ops/exclude_nodes")
    cal_source = open_source(job.calibration, inputs, "calibration")
    eval_source = open_source(job.evaluation, inputs, "evaluation") if job.evaluation else None
    cpu = ort_backend.cpu_info()
    bits = job.quantization.weight_bits
    weight_bits = bits if bits != "auto" else (8 if cpu["vnni"] else 7)
    weight_qmax = QMAX_BY_BITS[weight_bits]
    root = Path(out_root) if out_root is not None else job.output
    model_sha = file_sha256(job.model)

    with staged_output(root, job.name) as stage:
        ranges, cal_info, means = _calibrate(job, model, plan, inputs, cal_source, progress, root, model_sha, reuse,
                                             shard_map)
        _write_ranges(stage, ranges, cal_info, model_sha, job)
        wmethod = job.quantization.weight_method
        if job.quantization.bias_correction:
            np.savez(stage / MEANS, **dict(sorted(means.items())))  # same bytes whether collected or reused
        else:
            means = None
        trt_qdq = insert_qdq(model, plan, ranges, "tensorrt", weight_method=wmethod, input_means=means)
        kept = [node for node, _ in plan.kept_fp32]
        if target == "tensorrt" and job.quantization.keep_precision == "fp16" and kept:
            trt_qdq = cast_nodes_fp16(trt_qdq, kept)
        onnx.save(trt_qdq, str(stage / QDQ_MODEL))
        engine: dict = {}
        ort_qdq = None
        if target == "tensorrt":
            def calibration_feeds():
                src = open_source(job.calibration, inputs, "calibration")
                for batch in batches(src, inputs, job.calibration.batch_size, "calibration", job.calibration.skip,
                                     job.calibration.max_samples):
                    yield batch.feeds

            engine = trt_backend.build_plan(job, stage, model, ranges, inputs, calibration_feeds, kept, progress)
            if eval_source is None:  # with an evaluation, the inspector runs after it
                engine["inspection"] = trt_backend.inspect_plan(stage / engine["path"], inputs, engine)
        if target == "onnxruntime":
            if bits == "auto" and not cpu["vnni"]:
                progress.note("CPU without VNNI: ONNX Runtime engine uses 7-bit weights to avoid int16 saturation "
                              "(quantization.weight_bits overrides)")
            ort_qdq = insert_qdq(model, plan, ranges, "onnxruntime", weight_qmax, wmethod, means)
            kernels = ort_backend.build_engine(ort_qdq, stage / ORT_ENGINE)
            engine = {"path": ORT_ENGINE, "kind": "onnxruntime-cpu", "kernels": kernels,
                      "weight_bits": weight_bits, "optimized_for": cpu}
        report = {
            "schema_version": 1,
            "job": job.model_dump(mode="json", by_alias=True),
            "versions": {"trtq": __version__, "onnxruntime": cpu["onnxruntime"], "onnx": onnx.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "machine": cpu,
            "threads": job.evaluation.latency.threads if job.evaluation else None,
            "model": {"path": str(job.model), "sha256": model_sha, "inputs": [
                {"name": i.name, "shape": list(i.shape), "dtype": str(i.dtype)} for i in inputs],
                "outputs": output_names(model)},
            "calibration": cal_info,
            "quantization": {"target": target, "quantized_nodes": len(plan.nodes), "weight_method": wmethod,
                             "bias_correction": means is not None,
                             "kept_fp32": [list(k) for k in plan.kept_fp32],
                             "activation_tensors": len(plan.activations)},
            "engine": engine,
            "artifacts": [QDQ_MODEL, CACHE, RANGES] + ([MEANS] if means is not None else [])
                         + ([engine["path"]] if engine else []) + _engine_extras(engine) + ["report.json", "report.md"],
        }
        if eval_source is not None:
            if target == "tensorrt":
                report.update(trt_evaluation(job, model, trt_qdq, plan, inputs, stage, progress, engine))
            else:
                int8 = ort_backend.load_engine(stage / ORT_ENGINE, threads=job.evaluation.latency.threads)
                report.update(evaluate(job, model, ort_qdq, plan, int8, inputs, stage, progress))
            report["artifacts"] += report["plots"]
        write_json(report, stage / "report.json")
        write_markdown(report, stage / "report.md")
    return BuildResult(root / job.name, report)
