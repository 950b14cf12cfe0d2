"""Evaluation of INT8 against FP32 (used by ``trtq build`` and ``trtq eval``): accuracy and
fidelity on the same samples, per-layer error, interleaved latency — on ONNX Runtime, or on a
TensorRT ``engine.plan`` (:func:`evaluate_tensorrt`). The report's sections come back as values;
plots and files are the report stage's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..data.sources import batches, open_source, planned_count, prefetch
from ..errors import JobError
from ..job import EvaluationSpec, TensorRTSpec
from ..model.prepare import PreparedModel
from ..plugins import import_callable
from ..progress import Progress
from ..runtime import onnxruntime as ort_runtime
from .latency import interleaved, summarize
from .metrics import AccuracyAccumulator
from .per_layer import per_layer_errors


def _latency_feeds(first: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A batch of ``batch_size`` built from real evaluation samples (repeated if too few)."""
    out = {}
    for k, v in first.items():
        reps = -(-batch_size // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:batch_size])
    return out


Timer = Callable[[dict], dict]


@dataclass
class Evaluation:
    sections: dict  # report sections: fp32, int8, [custom_metric], latency_ratio, [per_layer], [gpu_compute]
    latency_ms: dict  # batch size → {"fp32": [ms…], "int8": [ms…]}: every timed run (for plots)


def evaluate(prepared: PreparedModel, spec: EvaluationSpec, qdq_model: onnx.ModelProto, int8: Callable,
             progress: Progress, timer: Timer | None = None) -> Evaluation:
    """INT8 against FP32 on ``spec``'s data: accuracy and fidelity, per-layer error, latency.

    ``int8`` runs the INT8 engine (``int8(feeds, names)`` → outputs); accuracy compares it with
    the FP32 model in ONNX Runtime; the per-layer analysis runs ``qdq_model``.
    ``timer(feeds)`` → ``{"fp32": [ms…], "int8": [ms…]}`` times both sides; by default the FP32
    model and ``int8`` in ONNX Runtime, interleaved."""
    threads = spec.latency.threads
    fp32 = ort_runtime.Runner(ort_runtime.session(prepared.model, threads=threads))
    lspec = spec.latency
    if timer is None:
        def timer(feeds):
            return interleaved({"fp32": lambda: fp32(feeds), "int8": lambda: int8(feeds)},
                               lspec.warmup, lspec.iterations, lspec.duration_s)
    accuracy, first = _accuracy(prepared, spec, fp32, int8, progress)
    per_layer = _per_layer(prepared, spec, qdq_model, progress) if spec.per_layer_samples else None
    lat: dict = {"fp32": {}, "int8": {}}
    raw: dict = {}
    with progress.task("measuring latency", len(lspec.batch_sizes), "batch sizes") as advance:
        for bs in lspec.batch_sizes:
            times = timer(_latency_feeds(first, bs))
            raw[str(bs)] = times
            for side in ("fp32", "int8"):
                lat[side][str(bs)] = summarize(times[side], bs)
            advance(1)

    result: dict = {}
    for side in ("fp32", "int8"):
        by_batch = lat[side]
        head = by_batch[str(lspec.batch_sizes[0])]
        result[side] = {"accuracy": accuracy[side],
                        "latency": {"batch_size": lspec.batch_sizes[0], "p50_ms": head["p50_ms"],
                                    "mean_ms": head["mean_ms"], "by_batch": by_batch}}
    if "custom" in accuracy:
        result["custom_metric"] = accuracy["custom"]
    result["latency_ratio"] = {bs: lat["int8"][bs]["p50_ms"] / lat["fp32"][bs]["p50_ms"] for bs in lat["fp32"]}
    if per_layer is not None:
        result["per_layer"] = per_layer
    return Evaluation(result, raw)


def _accuracy(prepared: PreparedModel, spec: EvaluationSpec, fp32, int8,
              progress: Progress) -> tuple[dict, dict[str, np.ndarray]]:
    """(accuracy and fidelity of both sides, the first batch's feeds) over every evaluation sample."""
    inputs = prepared.inputs
    names = fp32.output_names
    accs = {n: AccuracyAccumulator(spec.top_k) for n in names}
    metric = import_callable(spec.metric, "evaluation.metric") if spec.metric else None
    kept: dict[str, list] = {"fp32": [], "int8": [], "labels": []}
    first: dict[str, np.ndarray] | None = None
    src = open_source(spec, inputs, "evaluation")
    with progress.task("evaluating accuracy", planned_count(src, spec.skip, spec.max_samples), "samples") as advance:
        for batch in prefetch(batches(src, inputs, spec.batch_size, "evaluation", spec.skip, spec.max_samples)):
            if first is None:
                first = batch.feeds
            a, b = fp32(batch.feeds, names), int8(batch.feeds, names)
            for i, n in enumerate(names):
                accs[n].update(a[i], b[i], batch.labels if i == 0 else None)
            if metric is not None:
                kept["fp32"].append(dict(zip(names, a)))
                kept["int8"].append(dict(zip(names, b)))
                kept["labels"].append(batch.labels)
            advance(len(batch))
    accuracy = accs[names[0]].result()
    if len(names) > 1:
        accuracy["int8"]["fidelity_by_output"] = {n: accs[n].result()["int8"]["fidelity"] for n in names}
    if metric is not None:
        accuracy["custom"] = _run_metric(metric, spec.metric, kept, names)
    return accuracy, first


def _per_layer(prepared: PreparedModel, spec: EvaluationSpec, qdq_model: onnx.ModelProto, progress: Progress) -> dict:
    threads = spec.latency.threads
    src = open_source(spec, prepared.inputs, "evaluation")
    planned = planned_count(src, spec.skip, spec.max_samples) or spec.per_layer_samples
    with progress.task("per-layer error", min(spec.per_layer_samples, planned), "samples") as advance:
        per_layer = per_layer_errors(
            prepared.model, qdq_model, prepared.plan,
            batches(src, prepared.inputs, spec.batch_size, "evaluation", spec.skip, spec.max_samples),
            spec.per_layer_samples,
            lambda m, optimize: ort_runtime.Runner(ort_runtime.session(m, threads=threads, optimize=optimize)))
        advance(per_layer["samples"])
    return per_layer


def _run_metric(fn, ref: str, kept: dict, names: list[str]) -> dict:
    cat = {side: {n: np.concatenate([b[n] for b in kept[side]]) for n in names} for side in ("fp32", "int8")}
    labels = None if any(lab is None for lab in kept["labels"]) else np.concatenate(kept["labels"])
    try:
        out = fn(cat["fp32"], cat["int8"], labels)
    except Exception as exc:  # noqa: BLE001 - user code
        raise JobError(f"evaluation.metric: {ref} raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(out, dict) or not all(isinstance(v, (int, float)) for v in out.values()):
        raise JobError(f"evaluation.metric: {ref} must return a dict of numbers, e.g. {{'map': 0.41}}")
    return {str(k): float(v) for k, v in out.items()}


def evaluate_tensorrt(prepared: PreparedModel, spec: EvaluationSpec, trt_spec: TensorRTSpec, batch_sizes: list[int],
                      qdq_model: onnx.ModelProto, folder: Path, engine: dict, progress: Progress) -> Evaluation:
    """Evaluate ``folder/engine.plan``: accuracy against FP32 (ONNX Runtime), latency against a
    strongly typed FP32 engine of the same model on the same GPU (CUDA events), and the engine
    inspector's view of which layers run in INT8 (into ``engine["inspection"]``)."""
    from ..engine import tensorrt as trt_engine
    from ..trt.inspect import summarize as summarize_layers

    lspec = spec.latency
    with trt_engine.load_runner(folder / engine["path"]) as int8, \
            trt_engine.fp32_runner(prepared.model, folder, trt_spec, batch_sizes) as fp32_trt:
        gpu: dict = {"fp32": {}, "int8": {}}

        def timer(feeds):
            bs = len(next(iter(feeds.values())))
            out = {}
            for side, runner in (("fp32", fp32_trt), ("int8", int8)):
                t = runner.time(feeds, lspec.warmup, lspec.iterations, lspec.duration_s)
                gpu[side][str(bs)] = summarize(t["gpu_compute"], bs)
                out[side] = t["latency"]
            return out

        result = evaluate(prepared, spec, qdq_model, int8, progress, timer)
        engine["inspection"] = summarize_layers(int8.inspect())  # after runs: input shapes are set
    result.sections["gpu_compute"] = gpu
    return result
