"""Engines of one build's variants: the job's plan with more layers kept in float, or the ranges
of another calibration method — built the way the build builds its engine (the ONNX Runtime
engine on CPU; the TensorRT plan where TensorRT is; without it, the TensorRT-flavour Q/DQ model
in ONNX Runtime, the arithmetic the plan implements), so searches measure what is deployed."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx

from ..artifacts import QDQ_MODEL, write_atomic
from ..calib.ranges import Range
from ..data.sources import batches, open_source
from ..engine import onnxruntime as ort_engine
from ..engine import tensorrt as trt_engine
from ..job import Job
from ..model.placement import ort_placement
from ..model.plan import plan_quantization
from ..model.prepare import PreparedModel
from ..model.prequant import tensorrt_form
from ..progress import Progress
from ..quant.precision import cast_nodes_fp16
from ..quant.qdq import insert_qdq
from ..quant.weights import QMAX_BY_BITS, FixedWeight
from ..runtime.onnxruntime import Runner, session
from .prequantized import fixed_weights


def ort_qdq(prepared: PreparedModel, ranges: dict[str, Range], means, bits: int, weight_method: str,
            granularity: str, fixed: dict[str, FixedWeight] | None = None) -> onnx.ModelProto:
    """The ONNX Runtime-flavour Q/DQ model; ``fixed``: int8 weights decided before (AdaRound's);
    a pre-quantized model's own are used."""
    if prepared.prequantized is not None:
        fixed = fixed_weights(prepared.prequantized)
    return insert_qdq(prepared.model, prepared.plan, ranges, "onnxruntime", QMAX_BY_BITS[bits], weight_method,
                      means, fixed_weights=fixed, weight_granularity=granularity)


def ort_engine_file(job: Job, prepared: PreparedModel, ranges: dict[str, Range], means, path: Path,
                    cpu: dict, fixed: dict[str, FixedWeight] | None = None) -> tuple[dict, onnx.ModelProto]:
    """The ONNX Runtime engine at ``path`` (the report's engine section) and its Q/DQ model (:func:`ort_qdq`)."""
    q = job.quantization
    bits = ort_engine.weight_bits(q.weight_bits, cpu)
    qdq = ort_qdq(prepared, ranges, means, bits, q.weight_method, q.weights, fixed)
    kernels = ort_engine.build_engine(qdq, path)
    return {"path": path.name, "kind": "onnxruntime-cpu", "kernels": kernels, "weight_bits": bits,
            "optimized_for": cpu}, qdq


def tensorrt_qdq(job: Job, prepared: PreparedModel, ranges: dict[str, Range], means,
                 fixed: dict[str, FixedWeight] | None = None) -> onnx.ModelProto:
    """The TensorRT-flavour Q/DQ model — a pre-quantized model's own Q/DQ as TensorRT takes it —
    its kept-out weighted ops cast to FP16 when the job says so (:func:`fp16_kept`)."""
    q = job.quantization
    if prepared.prequantized is not None:
        return tensorrt_form(prepared.prequantized, q.convert_asymmetric)
    qdq = insert_qdq(prepared.model, prepared.plan, ranges, "tensorrt", weight_method=q.weight_method,
                     input_means=means, fixed_weights=fixed, weight_granularity=q.weights)
    excluded = [node for node, _ in prepared.plan.excluded]
    if fp16_kept(job, prepared):
        qdq = cast_nodes_fp16(qdq, excluded)
    return qdq


def fp16_kept(job: Job, prepared: PreparedModel) -> bool:
    """Whether the TensorRT model keeps its layers out of INT8 in FP16 (not those of a pre-quantized model)."""
    q = job.quantization
    return (q.target == "tensorrt" and q.keep_precision == "fp16" and bool(prepared.plan.excluded)
            and prepared.prequantized is None)


def with_float(job: Job, prepared: PreparedModel, float_layers=(), reason: str | None = None) -> PreparedModel:
    """``prepared`` re-planned with ``float_layers`` (node names) kept out of INT8 besides the job's
    exclusions; ``reason``: what the report says of those layers (default: as the job's)."""
    q = job.quantization
    exclude = tuple(q.exclude_nodes) + tuple(float_layers)
    plan = plan_quantization(prepared.model, q.exclude_ops, exclude)
    plan.cache_only = list(prepared.plan.cache_only)
    if prepared.plan.ort is not None:  # the ONNX Runtime placement follows the layers kept in float
        plan.ort = ort_placement(prepared.model, {n.node for n in plan.nodes}, {*q.exclude_ops, *exclude})
    if reason is not None:
        kept = set(float_layers)
        plan.excluded = [(n, reason if n in kept else why) for n, why in plan.excluded]
    return replace(prepared, plan=plan)


def calibration_feeds(job: Job, prepared: PreparedModel):
    """``feeds()`` → the calibration batches' feeds (TensorRT's own calibrator reads them)."""
    spec = job.calibration

    def feeds():
        src = open_source(spec, prepared.inputs, "calibration")
        for batch in batches(src, prepared.inputs, spec.batch_size, "calibration", spec.skip, spec.max_samples):
            yield batch.feeds

    return feeds


class Variants:
    """Builds candidate engines of ``prepared`` in a scratch folder (removed by :meth:`close`)."""

    def __init__(self, job: Job, prepared: PreparedModel, means, cpu: dict, why_not: str | None,
                 progress: Progress):
        self.job, self.prepared, self.means, self.cpu, self.why_not = job, prepared, means, cpu, why_not
        self.progress = progress
        self.threads = job.evaluation.latency.threads if job.evaluation else None
        self._tmp = tempfile.TemporaryDirectory(prefix="trtq-variants-")
        self.folder = Path(self._tmp.name)

    def close(self) -> None:
        self._tmp.cleanup()

    def with_float(self, float_layers=()) -> PreparedModel:
        """The prepared model with ``float_layers`` (node names) also kept out of INT8."""
        return with_float(self.job, self.prepared, float_layers)

    @contextlib.contextmanager
    def engine(self, ranges: dict[str, Range], float_layers=()):
        """A runner of the variant's engine (``runner(feeds, names)`` → outputs)."""
        prepared = self.with_float(float_layers)
        if self.job.quantization.target == "onnxruntime":
            path = self.folder / "variant.ort.onnx"
            ort_engine_file(self.job, prepared, ranges, self.means, path, self.cpu)
            yield ort_engine.load_engine(path, threads=self.threads)
            return
        qdq = tensorrt_qdq(self.job, prepared, ranges, self.means)
        if self.why_not is not None:
            yield Runner(session(qdq, threads=self.threads, optimize=False))
            return
        with self._tensorrt_plan(prepared, qdq, ranges) as runner:
            yield runner

    def _tensorrt_plan(self, prepared: PreparedModel, qdq: onnx.ModelProto, ranges: dict[str, Range]):
        job = self.job
        write_atomic(self.folder / QDQ_MODEL, lambda tmp: onnx.save(qdq, str(tmp)))
        excluded = [node for node, _ in prepared.plan.excluded]
        engine = trt_engine.build_plan(job.tensorrt, job.calibrator, [b for _, b in job.batch_sizes()], self.folder,
                                       prepared.model, ranges, prepared.inputs, calibration_feeds(job, prepared),
                                       excluded, Progress())
        return trt_engine.load_runner(self.folder / engine["path"])
