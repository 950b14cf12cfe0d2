"""Q/DQ placement: which tensors to quantize, and the explicit-INT8 graph for each target.

Placement (TensorRT's documented rules, ``tensorrt-int8-facts.md`` §5): a QuantizeLinear →
DequantizeLinear pair on the *inputs* of weighted ops (Conv, ConvTranspose, Gemm, MatMul with
a constant B) — the activation per-tensor, the weight per-channel — and nothing on their
outputs. One pair per activation tensor, shared by all its quantized consumers.

Two flavours of the same placement:

* ``tensorrt`` — symmetric int8 activations (zero point 0), int8 weights, FP32 bias.
* ``onnxruntime`` — affine uint8 activations (scale and zero point from the calibrated
  [min, max]), int8 weights (7-bit on CPUs without VNNI, to avoid int16 saturation in the
  u8×s8 kernels), int32 bias: the form ONNX Runtime's CPU kernels fuse into QLinearConv.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import JobError
from ..scales import safe_amax
from .weights import WEIGHTED_OPS, per_channel_scales, quantize_weights, weight_axis

Flavor = Literal["tensorrt", "onnxruntime"]


@dataclass(frozen=True)
class QuantNode:
    node: str
    op_type: str
    activation: str
    weight: str
    axis: int
    bias: str | None


@dataclass
class QuantPlan:
    nodes: list[QuantNode]
    kept_fp32: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)

    @property
    def activations(self) -> list[str]:
        seen: dict[str, None] = {}
        for q in self.nodes:
            seen.setdefault(q.activation, None)
        return list(seen)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names (``<op>_<index>``) so jobs and reports can refer to them."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def plan_quantization(model: onnx.ModelProto, exclude_ops=(), exclude_nodes=()) -> QuantPlan:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    names = [n.name for n in graph.node]
    for bad in exclude_nodes:
        if bad not in names:
            close = difflib.get_close_matches(bad, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "node names are listed by 'trtq inspect MODEL'"
            raise JobError(f"quantization.exclude_nodes: no node named '{bad}' in the model; {hint}")
    plan = QuantPlan([])
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        if node.op_type in exclude_ops or node.name in exclude_nodes:
            plan.kept_fp32.append((node.name, "excluded by the job"))
            continue
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            plan.kept_fp32.append((node.name, "weight is not a constant initializer"))
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            plan.kept_fp32.append((node.name, "Gemm with transA=1"))
            continue
        w = inits[node.input[1]]
        if w.data_type != onnx.TensorProto.FLOAT or (node.op_type == "MatMul" and len(w.dims) != 2):
            plan.kept_fp32.append((node.name, "weight is not a float32 matrix/kernel"))
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        plan.nodes.append(QuantNode(node.name, node.op_type, node.input[0], node.input[1],
                                    weight_axis(node.op_type, attrs, len(w.dims)), bias))
    return plan


def activation_qparams(rng: dict[str, float], flavor: Flavor) -> tuple[float, int, int]:
    """(scale, zero point, ONNX dtype) of an activation for ``flavor``."""
    if flavor == "tensorrt":
        return safe_amax(rng["amax"]) / 127.0, 0, onnx.TensorProto.INT8
    lo, hi = min(rng["min"], 0.0), max(rng["max"], 0.0)
    if hi - lo <= 0:
        return 1.0 / 255.0, 0, onnx.TensorProto.UINT8
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return scale, zp, onnx.TensorProto.UINT8


BIAS_LIMIT = 2**30  # |int32 bias| kept below this, leaving headroom for the accumulation


def _fit_int32_bias(w_scales: np.ndarray, bias: np.ndarray, act_scale: float) -> np.ndarray:
    """Raise a channel's weight scale where ``bias / (act_scale · w_scale)`` would not fit the
    int32 bias (channels whose weights are almost, but not exactly, zero): such weights are
    negligible, and a saturated bias is not."""
    if bias.ndim != 1 or bias.shape[0] != w_scales.shape[0]:
        return w_scales
    need = (np.abs(bias.astype(np.float64)) / (np.float64(act_scale) * BIAS_LIMIT)).astype(np.float32)
    return np.maximum(w_scales, need)


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, dict[str, float]],
               flavor: Flavor, weight_qmax: int = 127, weight_method: str = "max") -> onnx.ModelProto:
    """Return a copy of ``model`` with Q/DQ pairs per ``plan`` and calibrated ``ranges``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    missing = [a for a in plan.activations if a not in ranges]
    if missing:
        raise JobError(f"no calibrated range for tensor(s) {', '.join(missing[:5])}; recalibrate")
    by_node = {q.node: q for q in plan.nodes}
    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1

    new_inits: list[onnx.TensorProto] = []
    act_dq: dict[str, tuple[str, float]] = {}
    weight_dq: dict[str, tuple[str, np.ndarray]] = {}
    replaced: set[str] = set()
    nodes: list[onnx.NodeProto] = []

    def const(name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        q = by_node.get(node.name)
        if q is not None:
            if q.activation not in act_dq:
                scale, zp, dtype = activation_qparams(ranges[q.activation], flavor)
                zp_np = np.array(zp, dtype=helper.tensor_dtype_to_np_dtype(dtype))
                s_name = const(f"{q.activation}_scale", np.array(scale, np.float32))
                z_name = const(f"{q.activation}_zero_point", zp_np)
                qo, dqo = f"{q.activation}_quantized", f"{q.activation}_dequantized"
                nodes.append(helper.make_node("QuantizeLinear", [q.activation, s_name, z_name], [qo],
                                              name=f"{q.activation}_QuantizeLinear"))
                nodes.append(helper.make_node("DequantizeLinear", [qo, s_name, z_name], [dqo],
                                              name=f"{q.activation}_DequantizeLinear"))
                act_dq[q.activation] = (dqo, float(np.float32(scale)))
            if q.weight not in weight_dq:
                w = numpy_helper.to_array(inits[q.weight])
                scales = per_channel_scales(w, q.axis, weight_qmax, weight_method)
                if flavor == "onnxruntime" and q.bias is not None:
                    scales = _fit_int32_bias(scales, numpy_helper.to_array(inits[q.bias]), act_dq[q.activation][1])
                qw = const(f"{q.weight}_quantized", quantize_weights(w, scales, q.axis, weight_qmax))
                ws = const(f"{q.weight}_scale", scales)
                wz = const(f"{q.weight}_zero_point", np.zeros(scales.shape, np.int8))
                dqo = f"{q.weight}_dequantized"
                nodes.append(helper.make_node("DequantizeLinear", [qw, ws, wz], [dqo],
                                              name=f"{q.weight}_DequantizeLinear", axis=q.axis))
                weight_dq[q.weight] = (dqo, scales)
                replaced.add(q.weight)
            node.input[0] = act_dq[q.activation][0]
            node.input[1] = weight_dq[q.weight][0]
            if flavor == "onnxruntime" and q.bias is not None and uses.get(q.bias) == 1:
                b = numpy_helper.to_array(inits[q.bias])
                w_scales = weight_dq[q.weight][1]
                if b.ndim == 1 and b.shape[0] == w_scales.shape[0]:
                    bs = (np.float32(act_dq[q.activation][1]) * w_scales).astype(np.float32)
                    bq = np.clip(np.rint(b.astype(np.float64) / bs), -(2**31), 2**31 - 1).astype(np.int32)
                    qb = const(f"{q.bias}_quantized", bq)
                    bsn = const(f"{q.bias}_scale", bs)
                    bz = const(f"{q.bias}_zero_point", np.zeros(bs.shape, np.int32))
                    nodes.append(helper.make_node("DequantizeLinear", [qb, bsn, bz], [f"{q.bias}_dequantized"],
                                                  name=f"{q.bias}_DequantizeLinear", axis=0))
                    node.input[2] = f"{q.bias}_dequantized"
                    replaced.add(q.bias)
        nodes.append(node)

    still_used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if not (i.name in replaced and i.name not in still_used)]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(out)
    return out
