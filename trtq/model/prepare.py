"""The prepared model: the FP32 model as every command uses it — loaded, checked, upgraded,
its nodes named — with its inputs and its quantization plan. One :func:`prepare` for
``trtq build``, ``trtq eval``, ``trtq cache``, ``trtq inspect`` and the benchmarks, so they
all see the same graph and the same node names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..artifacts import file_sha256
from ..errors import JobError, ModelError
from ..job import InputOptions, Job
from . import cle
from .controlflow import fold_constant_ifs
from .load import InputSpec, float_activations, input_specs, load_model, output_names, settle
from .placement import ort_placement
from .plan import QuantPlan, name_nodes, plan_quantization
from .prequant import PreQuantized, has_qdq, restrict_plan, strip
from .simplify import simplify


@dataclass
class PreparedModel:
    path: Path
    model: onnx.ModelProto
    inputs: list[InputSpec]
    plan: QuantPlan
    folded: list[str] = field(default_factory=list)  # If nodes replaced by the branch a constant input chose
    equalized: dict[str, np.ndarray] = field(default_factory=dict)  # tensor → channel scales (model/equalize.py)
    prequantized: PreQuantized | None = None  # the model held Q/DQ: ``model`` is its FP32 graph (model/prequant.py)
    cross_layer: dict | None = None  # what cross-layer equalization did (model/cle.py), when asked for
    rewrites: dict[str, list[str]] = field(default_factory=dict)  # model/simplify.py: step → nodes folded or made

    @property
    def outputs(self) -> list[str]:
        return output_names(self.model)

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file as given (what ranges.json and the store record)."""
        return file_sha256(self.path)

    def require_quantizable(self) -> None:
        inside = self.plan.in_subgraphs
        if not self.plan.nodes and inside:
            where = ", ".join(f"{n} ({c})" for n, c in list(inside.items())[:3])
            raise ModelError(f"{self.path}: all {sum(inside.values())} weighted ops are inside control-flow "
                             f"subgraphs ({where}), which trtq does not quantize; export the model without "
                             "If/Loop/Scan around them (e.g. for one fixed sample rate or sequence length)")
        if not self.plan.nodes:
            raise ModelError(f"{self.path}: no weighted op (Conv, ConvTranspose, Gemm, MatMul with constant weights) "
                             "to quantize; check quantization.exclude_ops/exclude_nodes")

    def check_batch_sizes(self, sizes: Iterable[tuple[str, int]]) -> None:
        """Each ``(job key, batch size)`` must fit inputs whose batch dimension is fixed."""
        sizes = list(sizes)
        for spec in self.inputs:
            fixed = spec.fixed_batch
            if fixed is None:
                continue
            for key, size in sizes:
                if size != fixed:
                    raise JobError(f"{key}: model input '{spec.name}' has a fixed batch of {fixed}; set {key} to "
                                   f"{fixed} (or export the model with a dynamic batch dimension)")


def _with_constant(spec: InputSpec, value) -> InputSpec:
    try:
        arr = np.asarray(value, dtype=spec.dtype)
    except (TypeError, ValueError):
        raise JobError(f"inputs.{spec.name}.value: {value!r} is not a {spec.dtype} value") from None
    want = spec.sample_shape()
    if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
        shown = "x".join("?" if w is None else str(w) for w in want) or "a scalar"
        raise JobError(f"inputs.{spec.name}.value: shape {list(arr.shape)} does not fit one sample of "
                       f"'{spec.name}' ({shown})")
    return replace(spec, constant=arr)


def prepare(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None, exclude_ops=(),
            exclude_nodes=(), inputs: dict[str, InputOptions] | None = None,
            every_tensor: bool = False, cross_layer: bool = False, for_onnxruntime: bool = False) -> PreparedModel:
    """Load ``path`` and plan its quantization (errors name the file, or the job key).
    ``inputs``: the job's ``inputs`` section (batch axes, constant inputs). ``every_tensor``:
    calibrate every FP32 tensor of the network, as TensorRT's implicit INT8 wants in its cache,
    besides the tensors Q/DQ goes on. ``cross_layer``: cross-layer equalization first (before the
    plan, which names the rewritten weights). ``for_onnxruntime``: plan the ONNX Runtime flavour's
    own placement too (its extra tensors are calibrated)."""
    inputs = inputs or {}
    axes = {k: v.batch_axis for k, v in inputs.items()}
    model = load_model(path, input_shapes, axes)
    specs = [s if inputs.get(s.name) is None or inputs[s.name].value is None
             else _with_constant(s, inputs[s.name].value) for s in input_specs(model, axes)]
    fixed = {s.name: s.constant for s in specs if s.constant is not None and s.batch_axis is None}
    folded = fold_constant_ifs(model, fixed) if fixed else []
    if folded:
        model = settle(model, Path(path), fresh=True)
    name_nodes(model)
    pre = None
    if has_qdq(model):
        model, pre = strip(model, path)
        model = settle(model, Path(path), fresh=True)
    cle_info, rewrites = None, {}
    if pre is None:  # a pre-quantized model's int8 weights are kept as they are: no folds into them
        model, rewrites = simplify(model, Path(path))
        if cross_layer:
            model, cle_info = cle.equalize_model(model)
    plan = plan_quantization(model, exclude_ops, exclude_nodes)
    if pre is not None:
        plan = restrict_plan(plan, set(pre.weights))
    if every_tensor:
        plan.cache_only = [t for t in float_activations(model) if t not in set(plan.activations)]
    if for_onnxruntime:
        plan.ort = ort_placement(model, {q.node for q in plan.nodes}, {*exclude_ops, *exclude_nodes})
    return PreparedModel(Path(path), model, specs, plan, folded, prequantized=pre, cross_layer=cle_info,
                         rewrites=rewrites)


def prepare_job(job: Job) -> PreparedModel:
    """The job's model, prepared, with its batch sizes checked and something to quantize."""
    q = job.quantization
    prepared = prepare(job.model, job.input_shapes, q.exclude_ops, q.exclude_nodes, job.inputs,
                       job.calibrates_every_tensor(), q.cross_layer_equalization, q.target == "onnxruntime")
    prepared.check_batch_sizes(job.batch_sizes())
    prepared.require_quantizable()
    if job.calibration is None and prepared.prequantized is None:
        raise JobError(f"{job.model}: calibration: required key is missing; add the calibration data to the job "
                       "(only a model that already holds QuantizeLinear/DequantizeLinear nodes may omit it)")
    return prepared
