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
from .weights import (WEIGHTED_OPS, bias_shift, dequantize_weights, per_channel_scales, quantize_weights,
                      weight_axis)

Flavor = Literal["tensorrt", "onnxruntime"]
POOLS = ("GlobalAveragePool", "AveragePool")


@dataclass(frozen=True)
class QuantNode:
    node: str
    op_type: str
    activation: str
    weight: str
    axis: int
    bias: str | None


@dataclass(frozen=True)
class AddPoint:
    """A residual Add of two activations: ``main`` comes from the later producer (the branch's
    last layer), ``skip`` is the shortcut."""

    node: str
    main: str
    skip: str


@dataclass
class QuantPlan:
    nodes: list[QuantNode]
    kept_fp32: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    adds: list[AddPoint] = field(default_factory=list)
    pools: list[tuple[str, str]] = field(default_factory=list)  # (AveragePool/GlobalAveragePool node, input)

    @property
    def activations(self) -> list[str]:
        """Every tensor either flavour quantizes, in graph order (what calibration collects)."""
        seen: dict[str, None] = {}
        for q in self.nodes:
            seen.setdefault(q.activation, None)
        for a in self.adds:
            seen.setdefault(a.skip, None)
            seen.setdefault(a.main, None)
        for _, t in self.pools:
            seen.setdefault(t, None)
        return list(seen)

    def channel_axes(self) -> dict[str, int]:
        """Axis of each weighted op's input that its weights reduce over (for bias correction)."""
        return {q.activation: (-1 if q.op_type == "MatMul" else 1) for q in self.nodes}

    def add_inputs(self, flavor: str) -> dict[str, set[str]]:
        """Add node → the inputs given Q/DQ: TensorRT quantizes only the skip input (so it can
        fuse Conv+Add; Q/DQ between the Conv and the Add would break that), ONNX Runtime both
        (so it forms QLinearAdd and the branch's last Conv becomes QLinearConv)."""
        out = {a.node: ({a.skip} if flavor == "tensorrt" else {a.skip, a.main}) for a in self.adds}
        out.update({node: {t} for node, t in self.pools})  # pooling is quantizable in both
        return out


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
    if "Add" not in exclude_ops:
        plan.adds = _residual_adds(model, inits, exclude_nodes)
    plan.pools = [(n.name, n.input[0]) for n in graph.node
                  if n.op_type in POOLS and n.op_type not in exclude_ops and n.name not in exclude_nodes
                  and n.input[0] not in inits]
    return plan


def _residual_adds(model: onnx.ModelProto, inits: dict, exclude_nodes) -> list[AddPoint]:
    order = {}
    producer = {}
    for i, node in enumerate(model.graph.node):
        for o in node.output:
            order[o], producer[o] = i, node
    graph_inputs = {i.name for i in model.graph.input}
    points = []
    for node in model.graph.node:
        if node.op_type != "Add" or node.name in exclude_nodes or len(node.input) != 2:
            continue
        a, b = node.input
        if a in inits or b in inits or a == b or not all(t in order or t in graph_inputs for t in (a, b)):
            continue  # a bias-like constant add, or not two distinct activations
        main, skip = (a, b) if order.get(a, -1) >= order.get(b, -1) else (b, a)
        if producer.get(main) is None or producer[main].op_type not in WEIGHTED_OPS:
            continue  # only residual adds closing a weighted branch
        points.append(AddPoint(node.name, main, skip))
    return points


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
               flavor: Flavor, weight_qmax: int = 127, weight_method: str = "max",
               input_means: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Return a copy of ``model`` with Q/DQ pairs per ``plan`` and calibrated ``ranges``.

    ``input_means`` (tensor → per-channel mean of a weighted op's input) turns on bias
    correction: each bias absorbs the mean shift its layer's weight quantization causes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    missing = [a for a in plan.activations if a not in ranges]
    if missing:
        raise JobError(f"no calibrated range for tensor(s) {', '.join(missing[:5])}; recalibrate")
    by_node = {q.node: q for q in plan.nodes}
    add_inputs = plan.add_inputs(flavor)
    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1

    new_inits: list[onnx.TensorProto] = []
    corrected: dict[str, np.ndarray] = {}
    act_dq: dict[str, tuple[str, float]] = {}
    weight_dq: dict[str, tuple[str, np.ndarray]] = {}
    replaced: set[str] = set()
    nodes: list[onnx.NodeProto] = []

    def const(name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def activation_pair(tensor: str) -> str:
        """The DQ output standing for ``tensor``; one Q→DQ pair per tensor, made on first use."""
        if tensor not in act_dq:
            scale, zp, dtype = activation_qparams(ranges[tensor], flavor)
            zp_np = np.array(zp, dtype=helper.tensor_dtype_to_np_dtype(dtype))
            s_name = const(f"{tensor}_scale", np.array(scale, np.float32))
            z_name = const(f"{tensor}_zero_point", zp_np)
            qo, dqo = f"{tensor}_quantized", f"{tensor}_dequantized"
            nodes.append(helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [qo],
                                          name=f"{tensor}_QuantizeLinear"))
            nodes.append(helper.make_node("DequantizeLinear", [qo, s_name, z_name], [dqo],
                                          name=f"{tensor}_DequantizeLinear"))
            act_dq[tensor] = (dqo, float(np.float32(scale)))
        return act_dq[tensor][0]

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for i, name in enumerate(node.input):
            if name in add_inputs.get(node.name, ()):
                node.input[i] = activation_pair(name)
        q = by_node.get(node.name)
        if q is not None:
            act_in = activation_pair(q.activation)
            bias = numpy_helper.to_array(inits[q.bias]) if q.bias is not None else None
            if q.weight not in weight_dq:
                w = numpy_helper.to_array(inits[q.weight])
                scales = per_channel_scales(w, q.axis, weight_qmax, weight_method)
                if bias is not None and input_means and input_means.get(q.activation) is not None:
                    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                    w_deq = dequantize_weights(quantize_weights(w, scales, q.axis, weight_qmax), scales, q.axis)
                    shift = bias_shift(q.op_type, attrs.get("group", 1), w, w_deq, input_means[q.activation],
                                       attrs.get("transB", 0))
                    if shift is not None and shift.size == bias.size:
                        bias = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(np.float32)
                        corrected[q.bias] = bias
                if flavor == "onnxruntime" and bias is not None:
                    scales = _fit_int32_bias(scales, bias, act_dq[q.activation][1])
                qw = const(f"{q.weight}_quantized", quantize_weights(w, scales, q.axis, weight_qmax))
                ws = const(f"{q.weight}_scale", scales)
                wz = const(f"{q.weight}_zero_point", np.zeros(scales.shape, np.int8))
                dqo = f"{q.weight}_dequantized"
                nodes.append(helper.make_node("DequantizeLinear", [qw, ws, wz], [dqo],
                                              name=f"{q.weight}_DequantizeLinear", axis=q.axis))
                weight_dq[q.weight] = (dqo, scales)
                replaced.add(q.weight)
            node.input[0] = act_in
            node.input[1] = weight_dq[q.weight][0]
            if flavor == "onnxruntime" and bias is not None and uses.get(q.bias) == 1:
                w_scales = weight_dq[q.weight][1]
                if bias.ndim == 1 and bias.shape[0] == w_scales.shape[0]:  # bias is corrected when that applies
                    bs = (np.float32(act_dq[q.activation][1]) * w_scales).astype(np.float32)
                    bq = np.clip(np.rint(bias.astype(np.float64) / bs), -(2**31), 2**31 - 1).astype(np.int32)
                    qb = const(f"{q.bias}_quantized", bq)
                    bsn = const(f"{q.bias}_scale", bs)
                    bz = const(f"{q.bias}_zero_point", np.zeros(bs.shape, np.int32))
                    nodes.append(helper.make_node("DequantizeLinear", [qb, bsn, bz], [f"{q.bias}_dequantized"],
                                                  name=f"{q.bias}_DequantizeLinear", axis=0))
                    node.input[2] = f"{q.bias}_dequantized"
                    replaced.add(q.bias)
            if q.bias in corrected and node.input[2] == q.bias and uses.get(q.bias) == 1:
                # a float bias (TensorRT's form, or a bias ONNX Runtime can't take as int32)
                node.input[2] = const(f"{q.bias}_corrected", corrected[q.bias])
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
