"""``trtq build``: the stages of one job, in order, from the validated :class:`~trtq.job.Job`
to the report — the only module that knows that order.

    prepared model → calibration (statistics → ranges) → Q/DQ models + cache → engine → evaluation → report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..artifacts import CACHE, MEANS, ORT_ENGINE, QDQ_MODEL, RANGES, staged_output, write_atomic
from ..calib.cache import cache_text
from ..calib.calibrate import Calibration, calibrate
from ..calib.shards import ShardMap
from ..data.sources import batches, open_source
from ..engine import onnxruntime as ort_engine
from ..engine import tensorrt as trt_engine
from ..evaluation.evaluate import Evaluation, evaluate, evaluate_tensorrt
from ..job import Job
from ..model.prepare import PreparedModel, prepare
from ..progress import Progress
from ..quant.precision import cast_nodes_fp16
from ..quant.qdq import insert_qdq
from ..quant.weights import QMAX_BY_BITS
from ..report.assemble import add_evaluation, build_report
from ..report.writer import write_report
from ..runtime.onnxruntime import cpu_info


@dataclass
class BuildResult:
    out_dir: Path  # the job's folder: every artifact of the build
    report: dict  # report.json's document


def prepare_job(job: Job) -> PreparedModel:
    """The job's model, prepared, with its batch sizes checked and something to quantize."""
    prepared = prepare(job.model, job.input_shapes, job.quantization.exclude_ops, job.quantization.exclude_nodes)
    prepared.check_batch_sizes(job.batch_sizes())
    prepared.require_quantizable()
    return prepared


def write_ranges(folder: Path, cal: Calibration, model_sha: str, job: Job) -> None:
    """``ranges.json`` and ``calibration.cache`` of a calibration."""
    doc = {
        "calibrator": cal.info["method"],
        "data_fingerprint": cal.info["data_fingerprint"],
        "samples": cal.info["samples"],
        "model_sha256": model_sha,
        "tensors": {k: r.to_json() for k, r in cal.ranges.items()},
    }
    write_atomic(folder / RANGES, json.dumps(doc, indent=2) + "\n")
    write_atomic(folder / CACHE, cache_text(cal.ranges, job.calibrator.cache_version, job.calibrator.cache_algorithm))


def _tensorrt_engine(job: Job, prepared: PreparedModel, cal: Calibration, stage: Path, excluded: list[str],
                     progress: Progress) -> dict:
    spec = job.calibration

    def calibration_feeds():
        src = open_source(spec, prepared.inputs, "calibration")
        for batch in batches(src, prepared.inputs, spec.batch_size, "calibration", spec.skip, spec.max_samples):
            yield batch.feeds

    engine = trt_engine.build_plan(job.tensorrt, job.calibrator, [b for _, b in job.batch_sizes()], stage,
                                   prepared.model, cal.ranges, prepared.inputs, calibration_feeds, excluded, progress)
    if job.evaluation is None:  # with an evaluation, the inspector runs after it
        engine["inspection"] = trt_engine.inspect_plan(stage / engine["path"], prepared.inputs, engine)
    return engine


def _ort_engine(job: Job, prepared: PreparedModel, cal: Calibration, means, stage: Path, cpu: dict,
                progress: Progress) -> tuple[dict, onnx.ModelProto]:
    q = job.quantization
    bits = ort_engine.weight_bits(q.weight_bits, cpu)
    if q.weight_bits == "auto" and bits == 7:
        progress.note("CPU without VNNI: ONNX Runtime engine uses 7-bit weights to avoid int16 saturation "
                      "(quantization.weight_bits overrides)")
    qdq = insert_qdq(prepared.model, prepared.plan, cal.ranges, "onnxruntime", QMAX_BY_BITS[bits], q.weight_method,
                     means)
    kernels = ort_engine.build_engine(qdq, stage / ORT_ENGINE)
    return {"path": ORT_ENGINE, "kind": "onnxruntime-cpu", "kernels": kernels, "weight_bits": bits,
            "optimized_for": cpu}, qdq


def evaluate_build(job: Job, prepared: PreparedModel, folder: Path, engine: dict, qdq: onnx.ModelProto,
                   progress: Progress) -> Evaluation:
    """Evaluate the engine in ``folder`` (``qdq``: the Q/DQ model the per-layer analysis runs)."""
    if engine["kind"] == "tensorrt":
        return evaluate_tensorrt(prepared, job.evaluation, job.tensorrt, [b for _, b in job.batch_sizes()], qdq,
                                 folder, engine, progress)
    int8 = ort_engine.load_engine(folder / engine["path"], threads=job.evaluation.latency.threads)
    return evaluate(prepared, job.evaluation, qdq, int8, progress)


def build(job: Job, out_root: Path | None = None, progress: Progress | None = None, reuse: bool = True,
          shard_map: ShardMap | None = None) -> BuildResult:
    """Build one job into ``<out_root>/<job.name>``. ``shard_map(fn, args)`` runs the calibration
    shards (``calibration.shards``): by default one after another in this process."""
    progress = progress or Progress()
    q = job.quantization
    if q.target == "tensorrt":
        trt_engine.check_target(job.tensorrt, trt_engine.require_tensorrt())
    prepared = prepare_job(job)
    open_source(job.calibration, prepared.inputs, "calibration")  # bad data fails before any work
    if job.evaluation is not None:
        open_source(job.evaluation, prepared.inputs, "evaluation")
    cpu = cpu_info()
    root = Path(out_root) if out_root is not None else job.output

    with staged_output(root, job.name) as stage:
        cal = calibrate(prepared, job.calibration, job.calibrator, progress, root, reuse, shard_map)
        write_ranges(stage, cal, prepared.sha256, job)
        means = None
        if q.bias_correction:
            means = cal.means
            arrays = dict(sorted(means.items()))  # same bytes whether collected or reused
            write_atomic(stage / MEANS, lambda tmp: np.savez(tmp, **arrays))
        trt_qdq = insert_qdq(prepared.model, prepared.plan, cal.ranges, "tensorrt", weight_method=q.weight_method,
                             input_means=means)
        excluded = [node for node, _ in prepared.plan.excluded]
        fp16 = q.target == "tensorrt" and q.keep_precision == "fp16" and bool(excluded)
        if fp16:
            trt_qdq = cast_nodes_fp16(trt_qdq, excluded)
        write_atomic(stage / QDQ_MODEL, lambda tmp: onnx.save(trt_qdq, str(tmp)))
        if q.target == "tensorrt":
            engine, eval_qdq = _tensorrt_engine(job, prepared, cal, stage, excluded, progress), trt_qdq
        else:
            engine, eval_qdq = _ort_engine(job, prepared, cal, means, stage, cpu, progress)
        quantization = {"target": q.target, "quantized_nodes": len(prepared.plan.nodes),
                        "weight_method": q.weight_method, "bias_correction": means is not None,
                        "excluded": [list(k) for k in prepared.plan.excluded],
                        "excluded_precision": "fp16" if fp16 else "fp32",
                        "activation_tensors": len(prepared.plan.activations)}
        report = build_report(job, prepared, cal.info, quantization, engine, cpu)
        if job.evaluation is not None:
            result = evaluate_build(job, prepared, stage, engine, eval_qdq, progress)
            add_evaluation(report, result.sections, result.latency_ms, stage)
        write_report(report, stage)
    return BuildResult(root / job.name, report)
