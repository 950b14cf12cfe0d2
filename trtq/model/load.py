"""Loading and preparing the FP32 ONNX model: validation, opset upgrade, input description."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, shape_inference, version_converter

from ..errors import ModelError
from .inputs import infer_batch_axes

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) need opset 13


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: np.dtype
    batch_axis: int | None = 0  # None: no batch axis, the input is fed as it is (see model/inputs.py)
    constant: np.ndarray | None = field(default=None, compare=False)  # one sample's value, fed for every sample

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[self.batch_axis] if self.batch_axis is not None else None

    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample: the input's shape without its batch axis."""
        if self.batch_axis is None:
            return self.shape
        return self.shape[:self.batch_axis] + self.shape[self.batch_axis + 1:]


def fixed_batch(inputs: list[InputSpec]) -> int | None:
    """The batch size the model's inputs fix, if any does (None: any batch size runs)."""
    return next((i.fixed_batch for i in inputs if i.fixed_batch is not None), None)


def load_model(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None,
               batch_axes: dict[str, int | None | str] | None = None) -> onnx.ModelProto:
    """Load, check and prepare a model; errors name the file and what to do. ``batch_axes``:
    the job's ``inputs.<name>.batch_axis`` (the batch axis stays dynamic under ``input_shapes``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found; check 'model:' in the job (or --set model=PATH)")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not an ONNX model ({exc.__class__.__name__}); give a .onnx file") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes); give a .onnx file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: ONNX checker rejected the model: {first}") from None
    model = _upgrade_opset(model, path)
    if input_shapes:
        _set_input_shapes(model, input_shapes, path, infer_batch_axes(graph_inputs(model), batch_axes))
    return settle(model, path)


def settle(model: onnx.ModelProto, path: Path, fresh: bool = False) -> onnx.ModelProto:
    """``Constant`` nodes as initializers and every tensor's shape inferred; ``fresh``: the
    exporter's value_info dropped first (after the graph changed, it may no longer hold)."""
    _constant_nodes_to_initializers(model)
    if fresh:
        del model.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - shape inference raises many types
        raise ModelError(f"{path}: shape inference failed ({str(exc).splitlines()[0]}); check input_shapes") from None


def _upgrade_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot upgrade opset {opset} to {MIN_OPSET} for per-channel Q/DQ ({exc})") from None
    # IR 3 models list initializers as graph inputs too; drop those so they stay constants
    inits = {i.name for i in upgraded.graph.initializer}
    keep = [i for i in upgraded.graph.input if i.name not in inits]
    del upgraded.graph.input[:]
    upgraded.graph.input.extend(keep)
    upgraded.ir_version = max(upgraded.ir_version, 7)
    return upgraded


def _constant_nodes_to_initializers(model: onnx.ModelProto) -> None:
    """Turn ``Constant`` nodes holding a tensor into initializers (Paddle exports keep weights there)."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _set_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path: Path,
                      axes: dict[str, int | None]) -> None:
    by_name = {i.name: i for i in graph_inputs(model)}
    for name, shape in shapes.items():
        if name not in by_name:
            raise ModelError(f"{path}: input_shapes names '{name}', which is not a model input; inputs: {', '.join(by_name)}")
        dims = by_name[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ModelError(f"{path}: input_shapes.{name} has {len(shape)} dims, the model input has {len(dims)}")
        for axis, (d, v) in enumerate(zip(dims, shape)):
            if d.HasField("dim_value") and d.dim_value > 0:  # 0 and -1 are dynamic, as a symbol is
                if d.dim_value != v:
                    raise ModelError(f"{path}: input_shapes.{name}: dimension {axis} is fixed to {d.dim_value} "
                                     f"in the model, {v} given")
            elif axis != axes.get(name, 0):  # the batch dimension stays dynamic: the batch size comes from the job
                d.Clear()
                d.dim_value = v


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_specs(model: onnx.ModelProto, batch_axes: dict[str, int | None | str] | None = None) -> list[InputSpec]:
    """The model's inputs: shape (None where dynamic: symbolic, unknown, 0 or negative), dtype and
    batch axis (inferred, or the job's ``inputs.<name>.batch_axis``)."""
    vis = graph_inputs(model)
    axes = infer_batch_axes(vis, batch_axes)
    specs = []
    for vi in vis:
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), axes[vi.name]))
    return specs


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def expose_tensors(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``tensors`` (graph inputs excepted)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in out.graph.value_info}
    for name in tensors:
        if name not in have:
            out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    return out


def tensor_types(model: onnx.ModelProto, infer: bool = True) -> dict[str, int]:
    """Every tensor's ONNX element type (inputs, initializers, node outputs) whose type is known;
    ``infer`` runs type inference first (for graphs whose ``value_info`` was not kept)."""
    if infer:
        try:
            model = shape_inference.infer_shapes(model, strict_mode=False)
        except (shape_inference.InferenceError, ValueError) as exc:  # e.g. a model over 2 GB
            raise ModelError(f"cannot infer the model's tensor types ({str(exc).splitlines()[0]})") from None
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return {k: v for k, v in types.items() if v != onnx.TensorProto.UNDEFINED}


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Every FP32 tensor the network computes or takes as input, in graph order: what TensorRT's
    implicit INT8 asks a calibration cache for (graph outputs included, initializers not)."""
    types = tensor_types(model, infer=False)  # load_model's inference has typed them
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return list(dict.fromkeys(t for t in names if types.get(t) == onnx.TensorProto.FLOAT))
