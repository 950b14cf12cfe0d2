"""``trtq build``: the stages of one job, in order, from the validated :class:`~trtq.job.Job`
to the report — the only module that knows that order.

    prepared model → calibration (statistics → ranges) → Q/DQ models + cache → engine → evaluation → report
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..artifacts import ADAROUND, CACHE, EQUALIZATION, MEANS, ORT_ENGINE, QDQ_MODEL, RANGES, staged_output, write_atomic
from ..calib.cache import cache_text
from ..calib.calibrate import Calibration, calibrate
from ..calib.channels import equalize_channels
from ..calib.layer_inputs import collect_rows
from ..calib.shards import ShardMap
from ..data.sources import open_source
from ..engine import onnxruntime as ort_engine
from ..engine import tensorrt as trt_engine
from ..evaluation.evaluate import Evaluation, evaluate, evaluate_tensorrt
from ..job import Job
from ..model.prepare import PreparedModel, prepare_job
from ..progress import Progress
from ..quant.adaround import learn_plan, save_fixed
from ..quant.weights import QMAX_BY_BITS
from ..report.assemble import add_evaluation, add_search, build_report
from ..report.size import model_size
from ..report.writer import write_report
from ..runtime.onnxruntime import Runner, cpu_info, session
from . import budget, prequantized
from .variants import calibration_feeds, fp16_kept, ort_engine_file, tensorrt_qdq


@dataclass
class BuildResult:
    out_dir: Path  # the job's folder: every artifact of the build
    report: dict  # report.json's document


def write_ranges(folder: Path, cal: Calibration, model_sha: str, job: Job, tensorrt_version: str | None,
                 trt_tensors: list[str] | None) -> dict:
    """``ranges.json`` and ``calibration.cache`` of a calibration; the cache header's version is the
    job's, else that of ``tensorrt_version`` (the installed TensorRT), else trtq's default — which
    one goes into the report's ``calibration.cache_header``. The cache holds ``trt_tensors``' ranges
    (None: every range, as for a pre-quantized model's own scales)."""
    doc = {
        "calibrator": cal.info["method"],
        "data_fingerprint": cal.info["data_fingerprint"],
        "samples": cal.info["samples"],
        "model_sha256": model_sha,
        "tensors": {k: r.to_json() for k, r in cal.ranges.items()},
    }
    write_atomic(folder / RANGES, json.dumps(doc, indent=2) + "\n")
    version, origin = trt_engine.cache_version(job.calibrator, tensorrt_version)
    # the cache holds what TensorRT reads: not the tensors only the ONNX Runtime flavour quantizes
    keep = set(cal.ranges) if trt_tensors is None else set(trt_tensors)
    trt_ranges = {t: r for t, r in cal.ranges.items() if t in keep}
    write_atomic(folder / CACHE, cache_text(trt_ranges, version, job.calibrator.cache_algorithm))
    return {"header": f"TRT-{version}-{job.calibrator.cache_algorithm}", "from": origin}


def _tensorrt_here(job: Job) -> tuple[str | None, str | None]:
    """(the TensorRT version on this machine, why no engine can be built here). A job for
    TensorRT on a machine without it still calibrates, writes the Q/DQ model and cache, and
    evaluates the Q/DQ model in ONNX Runtime; only the plan is left for a GPU machine."""
    if job.quantization.target != "tensorrt":
        return trt_engine.installed_version(), None
    trt, why = trt_engine.find_tensorrt()
    if trt is None:
        return None, why
    trt_engine.check_target(job.tensorrt, trt)
    return str(trt.__version__), None


def _tensorrt_engine(job: Job, prepared: PreparedModel, cal: Calibration, stage: Path, excluded: list[str],
                     progress: Progress, why_not: str | None) -> dict:
    batch_sizes = [b for _, b in job.batch_sizes()] or [1]  # a pre-quantized model may come without data
    if why_not is not None:
        engine = trt_engine.not_built(job.tensorrt, prepared.inputs, batch_sizes, job.model, job.build_command,
                                      why_not)
        progress.note(f"{engine['reason']}; on a GPU machine: {engine['build_on_gpu']['trtq']}")
        return engine
    engine = trt_engine.build_plan(job.tensorrt, job.calibrator, batch_sizes, stage, prepared.model, cal.ranges,
                                   prepared.inputs, calibration_feeds(job, prepared), excluded, progress)
    if job.evaluation is None:  # with an evaluation, the inspector runs after it
        engine["inspection"] = trt_engine.inspect_plan(stage / engine["path"], prepared.inputs, engine)
    return engine


class LearnedRounding:
    """AdaRound's fixed weights per weight range (qmax), learned on first use from one sample of
    layer inputs; ``info`` is the report's summary."""

    def __init__(self, job: Job, prepared: PreparedModel, cal: Calibration, progress: Progress):
        self.job, self.prepared, self.cal, self.progress = job, prepared, cal, progress
        self.rows: dict | None = None
        self.learned: dict[int, dict] = {}
        self.info: dict = {}

    def __call__(self, qmax: int) -> dict:
        q = self.job.quantization
        if qmax not in self.learned:
            t0 = time.perf_counter()
            if self.rows is None:
                self.rows = collect_rows(self.prepared, self.job.calibration, self.prepared.plan.nodes,
                                         q.adaround_samples, progress=self.progress)
            fixed, info = learn_plan(self.prepared.model, self.prepared.plan, self.rows, self.cal.ranges, qmax,
                                     q.weight_method, q.adaround_iterations)
            self.learned[qmax] = fixed
            self.info[str(qmax)] = {**info, "seconds": round(time.perf_counter() - t0, 2)}
            self.progress.note(f"adaround (qmax {qmax}): {info['layers']} layer(s), reconstruction error "
                               f"{info['error_vs_nearest']:.2f}x nearest rounding's")
        return self.learned[qmax]


def _ort_engine(job: Job, prepared: PreparedModel, cal: Calibration, means, stage: Path, cpu: dict,
                progress: Progress, rounding: LearnedRounding | None = None) -> tuple[dict, onnx.ModelProto]:
    fixed = None
    if rounding is not None:
        fixed = rounding(QMAX_BY_BITS[ort_engine.weight_bits(job.quantization.weight_bits, cpu)])
        save_fixed(stage / ADAROUND, fixed)
    engine, qdq = ort_engine_file(job, prepared, cal.ranges, means, stage / ORT_ENGINE, cpu, fixed)
    if job.quantization.weight_bits == "auto" and engine["weight_bits"] == 7:
        progress.note("CPU without VNNI: ONNX Runtime engine uses 7-bit weights to avoid int16 saturation "
                      "(quantization.weight_bits overrides)")
    return engine, qdq


def evaluate_build(job: Job, prepared: PreparedModel, folder: Path, engine: dict, qdq: onnx.ModelProto,
                   progress: Progress) -> Evaluation:
    """Evaluate the engine in ``folder`` (``qdq``: the Q/DQ model the per-layer analysis runs)."""
    if engine["kind"] == "tensorrt" and not engine.get("built", True):
        # no plan here: the Q/DQ model itself, unfused (DQ → FP32 op), i.e. the arithmetic the
        # engine implements; its CPU latency says nothing about TensorRT's, so none is measured
        qdq_runner = Runner(session(qdq, threads=job.evaluation.latency.threads, optimize=False))
        return evaluate(prepared, job.evaluation, qdq, qdq_runner, progress, measure_latency=False)
    if engine["kind"] == "tensorrt":
        return evaluate_tensorrt(prepared, job.evaluation, job.tensorrt, [b for _, b in job.batch_sizes()], qdq,
                                 folder, engine, progress)
    int8 = ort_engine.load_engine(folder / engine["path"], threads=job.evaluation.latency.threads)
    return evaluate(prepared, job.evaluation, qdq, int8, progress)


def cle_note(info: dict) -> str:
    """One line on what cross-layer equalization did and what it left."""
    left = sum(info["skipped"].values())
    why = "; ".join(f"{n}: {reason}" for reason, n in list(info["skipped"].items())[:3])
    return (f"cross-layer equalization: {info['pairs']} Conv pair(s) equalized in {info['sweeps']} sweep(s)"
            + (f"; {left} Conv input(s) left ({why})" if left else ""))


def equalize(job: Job, prepared: PreparedModel, progress: Progress) -> tuple[PreparedModel, list[dict]]:
    q = job.quantization
    prepared, scales, narrow = equalize_channels(prepared, job.calibration, q.equalize_channels, q.exclude_ops,
                                                 q.exclude_nodes, progress=progress)
    if scales:
        progress.note(f"equalized {sum(int((s > 1).sum()) for s in scales.values())} narrow channel(s) of "
                      f"{len(scales)} tensor(s) in front of depthwise convolutions (FP32-identical)")
    for f in narrow:
        left = f["channels"] if not f["equalized"] else f["narrow_after"]
        if left:
            chans = ", ".join(map(str, left[:8])) + (" …" if len(left) > 8 else "")
            cap = f["sqnr_cap_db"] if not f["equalized"] else f["sqnr_cap_after_db"]
            progress.note(f"narrow channels: '{f['tensor']}' channels {chans} (of {f['of']}) carry less than one "
                          f"int8 step: '{f['at']}' keeps at most {cap:.0f} dB SQNR in INT8"
                          + ("" if f["equalized"] else " (the graph cannot absorb equalization here)")
                          + "; consider keeping the depthwise convolution that reads it out of INT8 "
                          "(quantization.exclude_nodes)")
    return prepared, narrow


def build(job: Job, out_root: Path | None = None, progress: Progress | None = None, reuse: bool = True,
          shard_map: ShardMap | None = None) -> BuildResult:
    """Build one job into ``<out_root>/<job.name>``. ``shard_map(fn, args)`` runs the calibration
    shards (``calibration.shards``): by default one after another in this process."""
    progress = progress or Progress()
    q = job.quantization
    trt_version, why_not = _tensorrt_here(job)
    prepared = prepare_job(job)
    prequantized.check_target(job, prepared)
    for node in prepared.folded:
        progress.note(f"{node}: replaced by the branch the job's constant inputs select")
    if prepared.cross_layer is not None:
        progress.note(cle_note(prepared.cross_layer))
    for node, count in prepared.plan.in_subgraphs.items():
        progress.note(f"{count} weighted op(s) inside the subgraphs of {node} stay FP32: trtq does not quantize "
                      "inside control flow")
    for spec, what in ((job.calibration, "calibration"), (job.evaluation, "evaluation")):
        if spec is not None:
            open_source(spec, prepared.inputs, what)  # bad data fails before any work
    cpu = cpu_info()
    root = Path(out_root) if out_root is not None else job.output
    narrow, pre = [], None
    if prepared.prequantized is None:
        prepared, narrow = equalize(job, prepared, progress)

    with staged_output(root, job.name) as stage:
        if prepared.equalized:
            np.savez(stage / EQUALIZATION, **dict(sorted(prepared.equalized.items())))
        if prepared.prequantized is None:
            cal = calibrate(prepared, job.calibration, job.calibrator, progress, root, reuse, shard_map)
        else:
            cal, prepared, pre = prequantized.calibration(job, prepared, progress, root, reuse, shard_map)
        searched = budget.run(job, prepared, cal, cpu, why_not, progress) if budget.wanted(job) else None
        if searched is not None:
            prepared = budget.apply(searched, job, prepared, cal)
        cal.info["cache_header"] = write_ranges(stage, cal, prepared.sha256, job, trt_version,
                                                prepared.plan.trt_tensors if pre is None else None)
        means = None
        if q.bias_correction and pre is None:  # a pre-quantized model's weights and biases stay as they are
            means = cal.means
            arrays = dict(sorted(means.items()))  # same bytes whether collected or reused
            write_atomic(stage / MEANS, lambda tmp: np.savez(tmp, **arrays))
        rounding = LearnedRounding(job, prepared, cal, progress) if q.adaround else None
        excluded = [node for node, _ in prepared.plan.excluded]
        fp16 = fp16_kept(job, prepared)
        trt_qdq = tensorrt_qdq(job, prepared, cal.ranges, means, rounding(127) if rounding else None)
        write_atomic(stage / QDQ_MODEL, lambda tmp: onnx.save(trt_qdq, str(tmp)))
        if q.target == "tensorrt":
            engine, eval_qdq = _tensorrt_engine(job, prepared, cal, stage, excluded, progress, why_not), trt_qdq
        else:
            engine, eval_qdq = _ort_engine(job, prepared, cal, means, stage, cpu, progress, rounding)
        quantization = {"target": q.target, "quantized_nodes": len(prepared.plan.nodes),
                        "weight_method": q.weight_method, "weights": q.weights, "bias_correction": means is not None,
                        "excluded": [list(k) for k in prepared.plan.excluded],
                        "excluded_precision": "fp16" if fp16 else "fp32",
                        "activation_tensors": len(prepared.plan.activations),
                        "in_subgraphs": prepared.plan.in_subgraphs,
                        "equalized": {t: int((s > 1).sum()) for t, s in prepared.equalized.items()},
                        "cross_layer_equalization": prepared.cross_layer,
                        "adaround": rounding.info if rounding else None,
                        "narrow_channels": narrow, "kept_in_float": searched.float_layers if searched else []}
        if pre is not None:
            quantization["prequantized"] = pre
        size = model_size(prepared.path if pre is None else None, prepared.model, stage / QDQ_MODEL, trt_qdq,
                          stage / engine["path"] if engine.get("path") else None)
        report = build_report(job, prepared, cal.info, quantization, engine, cpu, size)
        if job.evaluation is not None:
            result = evaluate_build(job, prepared, stage, engine, eval_qdq, progress)
            add_evaluation(report, result.sections, result.latency_ms, stage)
        if searched is not None:
            add_search(report, searched.section, stage)
        write_report(report, stage)
    return BuildResult(root / job.name, report)
