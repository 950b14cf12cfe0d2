"""Evaluation of INT8 against FP32 (used by ``trtq build`` and ``trtq eval``): accuracy and
fidelity on the same samples, per-layer error, interleaved latency, plots."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..backends import onnxruntime as ort_backend
from ..data.sources import batches, open_source, planned_count, prefetch
from ..errors import JobError, OutputError
from ..evaluate.latency import interleaved, summarize
from ..evaluate.metrics import AccuracyAccumulator
from ..evaluate.per_layer import per_layer_errors
from ..model import InputSpec, input_specs, load_model
from ..plugins import import_callable
from ..progress import Progress
from ..quant.qdq import QuantPlan, insert_qdq, name_nodes, plan_quantization
from ..quant.weights import QMAX_BY_BITS
from ..report import plots
from ..report.writer import write_json, write_markdown
from .schema import Job


def _latency_feeds(first: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A batch of ``batch_size`` built from real evaluation samples (repeated if too few)."""
    out = {}
    for k, v in first.items():
        reps = -(-batch_size // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:batch_size])
    return out


Timer = Callable[[dict], dict]


def evaluate(job: Job, model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan, int8: Callable,
             inputs: list[InputSpec], folder: Path, progress: Progress, timer: Timer | None = None) -> dict:
    """Report sections ``fp32``, ``int8``, ``latency_ratio``, ``per_layer``, ``plots``;
    plots are written into ``folder``.

    ``int8`` runs the INT8 engine (``int8(feeds, names)`` → outputs); accuracy compares it with
    the FP32 model in ONNX Runtime. ``timer(feeds)`` → ``{"fp32": [ms…], "int8": [ms…]}`` times
    both sides; by default the FP32 model and ``int8`` in ONNX Runtime, interleaved."""
    spec = job.evaluation
    threads = spec.latency.threads
    fp32 = ort_backend.Runner(ort_backend.session(model, threads=threads))
    lspec = spec.latency
    if timer is None:
        def timer(feeds):
            return interleaved({"fp32": lambda: fp32(feeds), "int8": lambda: int8(feeds)},
                               lspec.warmup, lspec.iterations, lspec.duration_s)
    names = fp32.output_names
    accs = {n: AccuracyAccumulator(spec.top_k) for n in names}
    metric = import_callable(spec.metric, "evaluation.metric") if spec.metric else None
    kept: dict[str, list] = {"fp32": [], "int8": [], "labels": []}
    first: dict[str, np.ndarray] | None = None

    def source():
        return open_source(spec, inputs, "evaluation")

    src = source()
    with progress.task("evaluating accuracy", planned_count(src, spec.skip, spec.max_samples)) as advance:
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

    per_layer = None
    if spec.per_layer_samples:
        src = source()
        with progress.task("per-layer error", min(spec.per_layer_samples, planned_count(src, spec.skip, spec.max_samples) or spec.per_layer_samples)) as advance:
            per_layer = per_layer_errors(
                model, qdq_model, plan,
                batches(src, inputs, spec.batch_size, "evaluation", spec.skip, spec.max_samples),
                spec.per_layer_samples,
                lambda m, optimize: ort_backend.Runner(ort_backend.session(m, threads=threads, optimize=optimize)))
            advance(per_layer["samples"])

    lat: dict = {"fp32": {}, "int8": {}}
    raw: dict = {}
    with progress.task("measuring latency", len(lspec.batch_sizes)) as advance:
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
    result["plots"] = [plots.LATENCY_PNG]
    plots.latency_plot(raw, folder / plots.LATENCY_PNG)
    if per_layer is not None:
        result["per_layer"] = per_layer
        plots.per_layer_plot(per_layer, folder / plots.PER_LAYER_PNG)
        result["plots"].append(plots.PER_LAYER_PNG)
    return result


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


def reevaluate(job: Job, out_root: Path | None, progress: Progress) -> tuple[Path, dict]:
    """``trtq eval``: evaluate an existing build again without rebuilding it."""
    from .build import MEANS, ORT_ENGINE, QDQ_MODEL, RANGES, trt_evaluation
    from .fingerprint import file_sha256

    if job.evaluation is None:
        raise JobError("evaluation: the job has no evaluation section; add one to evaluate")
    folder = (Path(out_root) if out_root is not None else job.output) / job.name
    report_path = folder / "report.json"
    if not report_path.is_file() or not (folder / RANGES).is_file():
        raise JobError(f"{folder}: no build of job '{job.name}' there; run 'trtq build' first (or give --out)")
    report = json.loads(report_path.read_text())
    ranges_doc = json.loads((folder / RANGES).read_text())
    if ranges_doc["model_sha256"] != file_sha256(job.model):
        raise JobError(f"{job.model}: the model changed since {folder} was built; rebuild with 'trtq build'")
    model = load_model(job.model, job.input_shapes)
    name_nodes(model)
    inputs = input_specs(model)
    plan = plan_quantization(model, job.quantization.exclude_ops, job.quantization.exclude_nodes)
    if report["quantization"]["target"] == "tensorrt":
        engine = report["engine"]
        result = trt_evaluation(job, model, onnx.load(str(folder / QDQ_MODEL)), plan, inputs, folder, progress, engine)
        return _rewrite_report(job, folder, report, result)
    ranges = {k: {"amax": v["amax"], "min": v["min"], "max": v["max"]} for k, v in ranges_doc["tensors"].items()}
    qmax = QMAX_BY_BITS[report["engine"].get("weight_bits", 8)]
    means = None
    if (folder / MEANS).is_file():
        with np.load(folder / MEANS) as z:
            means = {k: z[k] for k in z.files}
    qdq = insert_qdq(model, plan, ranges, "onnxruntime", qmax, report["quantization"].get("weight_method", "max"), means)
    int8 = ort_backend.load_engine(folder / ORT_ENGINE, threads=job.evaluation.latency.threads)
    result = evaluate(job, model, qdq, plan, int8, inputs, folder, progress)
    return _rewrite_report(job, folder, report, result)


def _rewrite_report(job: Job, folder: Path, report: dict, result: dict) -> tuple[Path, dict]:
    for key in ("per_layer", "custom_metric", "gpu_compute"):
        report.pop(key, None)
    report.update(result)
    report["job"]["evaluation"] = job.evaluation.model_dump(mode="json", by_alias=True)
    report["artifacts"] = sorted(set(report["artifacts"]) | set(result["plots"]))
    for name, writer in (("report.json", write_json), ("report.md", write_markdown)):
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            writer(report, tmp)
            os.replace(tmp, folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{folder}: cannot write {name} ({exc.strerror})") from None
    return folder, report
