"""The prepared model: the FP32 model as every command uses it — loaded, checked, upgraded,
its nodes named — with its inputs and its quantization plan. One :func:`prepare` for
``trtq build``, ``trtq eval``, ``trtq cache``, ``trtq inspect`` and the benchmarks, so they
all see the same graph and the same node names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..artifacts import file_sha256
from ..errors import JobError, ModelError
from .load import InputSpec, float_activations, input_specs, load_model, output_names
from .plan import QuantPlan, name_nodes, plan_quantization


@dataclass
class PreparedModel:
    path: Path
    model: onnx.ModelProto
    inputs: list[InputSpec]
    plan: QuantPlan

    @property
    def outputs(self) -> list[str]:
        return output_names(self.model)

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file as given (what ranges.json and the store record)."""
        return file_sha256(self.path)

    def require_quantizable(self) -> None:
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


def prepare(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None, exclude_ops=(),
            exclude_nodes=(), every_tensor: bool = False) -> PreparedModel:
    """Load ``path`` and plan its quantization (errors name the file, or the job key).
    ``every_tensor``: calibrate every FP32 tensor of the network, as TensorRT's implicit INT8
    wants in its cache, besides the tensors Q/DQ goes on."""
    model = load_model(path, input_shapes)
    name_nodes(model)
    inputs = input_specs(model)
    plan = plan_quantization(model, exclude_ops, exclude_nodes)
    if every_tensor:
        plan.cache_only = [t for t in float_activations(model) if t not in set(plan.activations)]
    return PreparedModel(Path(path), model, inputs, plan)
