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
from ..errors import DataError
from ..job import EvaluationSpec, TensorRTSpec
from ..model.load import fixed_batch
from ..model.prepare import PreparedModel
from ..progress import Progress
from ..runtime import onnxruntime as ort_runtime
from ..runtime.onnxruntime import RunError
from .latency import interleaved, summarize
from .per_layer import per_layer_errors
from .scoring import Scorer


def latency_feeds(first: dict[str, np.ndarray], batch_size: int, inputs) -> dict[str, np.ndarray]:
    """A batch of ``batch_size`` built from real evaluation samples (repeated if too few), on each
    input's batch axis; an input without one is fed as it is."""
    out = {}
    axes = {i.name: i.batch_axis for i in inputs}
    for k, v in first.items():
        axis = axes.get(k, 0)
        if axis is None:
            out[k] = v
            continue
        reps = -(-batch_size // v.shape[axis])
        out[k] = np.ascontiguousarray(np.take(np.concatenate([v] * reps, axis=axis), range(batch_size), axis=axis))
    return out


Timer = Callable[[dict], dict]


@dataclass
class Evaluation:
    sections: dict  # report sections: fp32, int8, [custom_metric], latency_ratio, [per_layer], [gpu_compute]
    latency_ms: dict  # batch size → {"fp32": [ms…], "int8": [ms…]}: every timed run (for plots)


def evaluate(prepared: PreparedModel, spec: EvaluationSpec, qdq_model: onnx.ModelProto, int8: Callable,
             progress: Progress, timer: Timer | None = None, measure_latency: bool = True) -> Evaluation:
    """INT8 against FP32 on ``spec``'s data: accuracy and fidelity, per-layer error, latency.

    ``int8`` runs the INT8 engine (``int8(feeds, names)`` → outputs); accuracy compares it with
    the FP32 model in ONNX Runtime; the per-layer analysis runs ``qdq_model``.
    ``timer(feeds)`` → ``{"fp32": [ms…], "int8": [ms…]}`` times both sides; by default the FP32
    model and ``int8`` in ONNX Runtime, interleaved; ``measure_latency=False`` times nothing."""
    threads = spec.latency.threads
    fp32 = ort_runtime.Runner(ort_runtime.session(prepared.model, threads=threads))
    lspec = spec.latency
    if timer is None:
        def timer(feeds):
            return interleaved({"fp32": lambda: fp32(feeds), "int8": lambda: int8(feeds)},
                               lspec.warmup, lspec.iterations, lspec.duration_s)
    scored, first = _accuracy(prepared, spec, fp32, int8, progress)
    accuracy = scored["accuracy"]
    per_layer = per_layer_analysis(prepared, spec, qdq_model, progress) if spec.per_layer_samples else None
    result: dict = {side: {"accuracy": accuracy[side]} for side in ("fp32", "int8")}
    result["tasks"] = scored["tasks"]
    raw: dict = {}
    if measure_latency:
        raw = _add_latency(result, first, lspec, timer, progress, prepared.inputs)
    if "custom" in scored:
        result["custom_metric"] = scored["custom"]
    if per_layer is not None:
        result["per_layer"] = per_layer
    return Evaluation(result, raw)


def _add_latency(result: dict, first: dict[str, np.ndarray], lspec, timer: Timer, progress: Progress,
                 inputs) -> dict:
    """Time both sides at each batch size into ``result``; every timed run, for the plots."""
    lat: dict = {"fp32": {}, "int8": {}}
    raw: dict = {}
    with progress.task("measuring latency", len(lspec.batch_sizes), "batch sizes") as advance:
        for bs in lspec.batch_sizes:
            times = timer(latency_feeds(first, bs, inputs))
            raw[str(bs)] = times
            for side in ("fp32", "int8"):
                lat[side][str(bs)] = summarize(times[side], bs)
            advance(1)
    for side in ("fp32", "int8"):
        by_batch = lat[side]
        head = by_batch[str(lspec.batch_sizes[0])]
        result[side]["latency"] = {"batch_size": lspec.batch_sizes[0], "p50_ms": head["p50_ms"],
                                   "mean_ms": head["mean_ms"], "by_batch": by_batch}
    result["latency_ratio"] = {bs: lat["int8"][bs]["p50_ms"] / lat["fp32"][bs]["p50_ms"] for bs in lat["fp32"]}
    return raw


def _accuracy(prepared: PreparedModel, spec: EvaluationSpec, fp32, int8,
              progress: Progress) -> tuple[dict, dict[str, np.ndarray]]:
    """(accuracy and fidelity of both sides, each output's task metrics, the custom metric; the
    first batch's feeds) over every evaluation sample."""
    names = fp32.output_names
    scorer = Scorer(spec, names)
    first: dict[str, np.ndarray] | None = None
    src = open_source(spec, prepared.inputs, "evaluation")
    with progress.task("evaluating accuracy", planned_count(src, spec.skip, spec.max_samples), "samples") as advance:
        for batch in prefetch(batches(src, prepared.inputs, spec.batch_size, "evaluation", spec.skip, spec.max_samples,
                                      note=progress.note)):
            if first is None:
                first = batch.feeds
            a, b = run_checked(fp32, batch, names), run_checked(int8, batch, names)
            if batch.labels is not None:
                _check_labels(batch, a[0], names[0], src.description)
            scorer.update(batch.feeds, a, b, batch.labels, len(batch))
            advance(len(batch))
    return scorer.result(), first


def run_checked(runner, batch, names: list[str]) -> list:
    """``runner``'s outputs of one batch; a model that cannot run it is a data error naming it."""
    try:
        return runner(batch.feeds, names)
    except RunError as exc:
        raise DataError(f"evaluation: {batch.describe()}: {exc}") from None


def _check_labels(batch, output: np.ndarray, name: str, source: str) -> None:
    classes = int(np.prod(output.shape[1:])) if output.ndim > 1 else 1
    bad = batch.labels[(batch.labels < 0) | (batch.labels >= classes)]
    if bad.size:
        raise DataError(f"evaluation.labels: {batch.describe()} of {source} have class_index {int(bad[0])}, but the "
                        f"model's output '{name}' has {classes} classes; these labels are for another model — "
                        "give evaluation.labels, or labels: none")


def per_layer_analysis(prepared: PreparedModel, spec: EvaluationSpec, qdq_model: onnx.ModelProto, progress: Progress) -> dict:
    threads = spec.latency.threads
    planned = planned_count(open_source(spec, prepared.inputs, "evaluation"), spec.skip, spec.max_samples)
    count = min(spec.per_layer_samples, planned or spec.per_layer_samples)

    def make_batches():
        src = open_source(spec, prepared.inputs, "evaluation")
        # one sample at a time: the exposed tensors of both models, not a whole batch of them, are what
        # must fit (and a fixed batch size keeps its own)
        return batches(src, prepared.inputs, fixed_batch(prepared.inputs) or 1, "evaluation", spec.skip, count)

    with progress.task("per-layer error", count, "samples") as advance:
        per_layer = per_layer_errors(
            prepared.model, qdq_model, prepared.plan, make_batches, spec.per_layer_samples,
            lambda m, optimize: ort_runtime.Runner(ort_runtime.session(m, threads=threads, optimize=optimize)),
            prepared.inputs, spec.memory_budget_mb << 20)
        advance(per_layer["samples"])
    return per_layer


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
