"""Precision of layers kept out of INT8, written into the graph.

TensorRT's strongly typed networks (11.x, and 10.x explicit mode) take every tensor's type from
the ONNX graph: there is no builder flag to run a layer in FP16. So a job that wants its
excluded layers in FP16 gets them cast in the Q/DQ model: float inputs pass through
``Cast(to=FLOAT16)``, float initializers are stored as FP16, and each output is cast back to
FP32 under its original name, so the rest of the graph is unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from ..model.load import tensor_types


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """The Q/DQ graph carries no ``value_info`` (insert_qdq rebuilds the node list): infer it."""
    try:
        return tensor_types(model)
    except ModelError as exc:
        raise ModelError(f"keep_precision: fp16: {exc}; use keep_precision: fp32") from None


def _is_float(types: dict[str, int], name: str, node: str) -> bool:
    if name not in types:
        raise ModelError(f"cannot tell the type of tensor '{name}' (an input of '{node}') to cast it to FP16; "
                         "use keep_precision: fp32 or leave the node in INT8")
    return types[name] == TensorProto.FLOAT


def cast_nodes_fp16(model: onnx.ModelProto, nodes: list[str] | tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` in which the named nodes compute in FP16."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    wanted = set(nodes)
    types = _tensor_types(out)
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    half_of: dict[str, str] = {}  # float tensor → its FP16 copy (shared by several FP16 nodes)
    for n in g.node:
        if n.name not in wanted:
            new_nodes.append(n)
            continue
        for k, name in enumerate(n.input):
            if not name or not _is_float(types, name, n.name):
                continue
            if name not in half_of:
                half = f"{name}__fp16"
                if name in inits:
                    g.initializer.append(numpy_helper.from_array(
                        numpy_helper.to_array(inits[name]).astype(np.float16), half))
                else:
                    new_nodes.append(helper.make_node("Cast", [name], [half], name=f"{name}__to_fp16",
                                                      to=TensorProto.FLOAT16))
                half_of[name] = half
            n.input[k] = half_of[name]
        new_nodes.append(n)
        for k, name in enumerate(n.output):
            if not name:
                continue
            half = f"{name}__fp16"
            n.output[k] = half
            half_of[name] = half  # a following FP16 node reads it as it is
            new_nodes.append(helper.make_node("Cast", [half], [name], name=f"{name}__to_fp32", to=TensorProto.FLOAT))
    missing = wanted - {n.name for n in g.node}
    if missing:
        raise ValueError(f"no node named {sorted(missing)[0]!r}")
    del g.node[:]
    g.node.extend(new_nodes)
    # drop FP32 initializers only the FP16 nodes used
    still_used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out
