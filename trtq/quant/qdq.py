"""The explicit-INT8 Q/DQ graph of a :class:`~trtq.model.plan.QuantPlan` with calibrated ranges.

Placement (TensorRT's documented rules, ``tensorrt-int8-facts.md`` §5): a QuantizeLinear →
DequantizeLinear pair on the *inputs* of weighted ops (Conv, ConvTranspose, Gemm, MatMul with
a constant B) — the activation per-tensor, the weight per-channel, stored int8 behind a DQ —
and nothing on their outputs; residual Adds and pooling inputs as the flavour's
:class:`~trtq.quant.policy.Policy` says. The ONNX Runtime flavour of a plan that has its own
placement (:mod:`trtq.model.placement`) puts pairs on the tensors it names instead, read
through the DQ by the readers it names. One pair per activation tensor, shared by all its
quantized consumers. Everything a flavour changes (activation dtype and zero point, Add
inputs, int32 bias) is decided by its policy, not here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..calib.ranges import Range
from ..errors import JobError
from ..model.plan import QuantNode, QuantPlan
from .policy import Flavor, Policy, policy as get_policy
from .weights import FixedWeight, bias_shift, dequantize_weights, quantize_weights, weight_scales

BIAS_LIMIT = 2**30  # |int32 bias| kept below this, leaving headroom for the accumulation


def _fit_int32_bias(w_scales: np.ndarray, bias: np.ndarray, act_scale: float) -> np.ndarray:
    """Raise a channel's weight scale where ``bias / (act_scale · w_scale)`` would not fit the
    int32 bias (channels whose weights are almost, but not exactly, zero): such weights are
    negligible, and a saturated bias is not."""
    if bias.ndim != 1 or (w_scales.ndim and bias.shape[0] != w_scales.shape[0]):
        return w_scales
    need = (np.abs(bias.astype(np.float64)) / (np.float64(act_scale) * BIAS_LIMIT)).astype(np.float32)
    return np.maximum(w_scales, need if w_scales.ndim else need.max(initial=0))


class _QDQGraph:
    """The new graph being written: nodes in order, new initializers, and the Q/DQ made so far."""

    def __init__(self, model: onnx.ModelProto, ranges: dict[str, Range], pol: Policy,
                 fixed: dict[str, FixedWeight] | None = None, granularity: str = "per_channel"):
        self.model, self.ranges, self.policy = model, ranges, pol
        self.fixed, self.granularity = fixed or {}, granularity
        self.inits = {i.name: i for i in model.graph.initializer}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for i in node.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.act_dq: dict[str, tuple[str, float]] = {}  # tensor → (its DQ output, scale)
        self.weight_dq: dict[str, tuple[str, np.ndarray]] = {}  # weight → (its DQ output, per-channel scales)
        self.corrected: dict[str, np.ndarray] = {}  # bias → bias-corrected values
        self.replaced: set[str] = set()  # initializers that Q/DQ or corrected copies stand in for
        graph = model.graph
        self.tensor_names = {i.name for i in graph.initializer} | {v.name for v in (*graph.input, *graph.output)} | \
            {t for n in graph.node for t in (*n.input, *n.output)}
        self.node_names = {n.name for n in graph.node}

    @staticmethod
    def _fresh(name: str, taken: set[str]) -> str:
        """``name``, or ``name_1``, ``name_2``… where the model already has a ``name``."""
        fresh, k = name, 0
        while fresh in taken:
            k += 1
            fresh = f"{name}_{k}"
        taken.add(fresh)
        return fresh

    def tensor(self, name: str) -> str:
        return self._fresh(name, self.tensor_names)

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        """Append a Q or DQ node; returns its (unique) output tensor name."""
        out = self.tensor(output)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._fresh(name, self.node_names), **attrs))
        return out

    def const(self, name: str, value) -> str:
        name = self.tensor(name)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def array(self, name: str | None) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name is not None else None

    # -- activations -------------------------------------------------------------------------
    def activation(self, tensor: str) -> str:
        """The DQ output standing for ``tensor``; one Q→DQ pair per tensor, made on first use."""
        if tensor not in self.act_dq:
            scale, zp, dtype = self.policy.activation_qparams(self.ranges[tensor])
            zp_np = np.array(zp, dtype=helper.tensor_dtype_to_np_dtype(dtype))
            s_name = self.const(f"{tensor}_scale", np.array(scale, np.float32))
            z_name = self.const(f"{tensor}_zero_point", zp_np)
            qo = self.node("QuantizeLinear", [tensor, s_name, z_name], f"{tensor}_quantized", f"{tensor}_QuantizeLinear")
            dqo = self.node("DequantizeLinear", [qo, s_name, z_name], f"{tensor}_dequantized",
                            f"{tensor}_DequantizeLinear")
            self.act_dq[tensor] = (dqo, float(np.float32(scale)))
        return self.act_dq[tensor][0]

    # -- weights (with bias correction) --------------------------------------------------------
    def weight(self, node: onnx.NodeProto, q: QuantNode, bias: np.ndarray | None, qmax: int, method: str,
               mean: np.ndarray | None) -> np.ndarray | None:
        """int8 weights behind a DQ (per channel or per tensor, or the given :class:`FixedWeight` as it is);
        returns the bias, corrected when ``mean`` (the input's per-channel mean) is known."""
        w = self.array(q.weight)
        fixed = self.fixed.get(q.weight)
        if fixed is not None:
            if fixed.q.shape != w.shape or np.ndim(fixed.scale) not in (0, 1):
                raise JobError(f"fixed weight for {q.weight}: int8 values {fixed.q.shape} and scale "
                               f"{np.shape(fixed.scale)} do not fit the weight {w.shape}")
            scales, axis, qw_values = np.asarray(fixed.scale, np.float32), fixed.axis, fixed.q.astype(np.int8)
        else:
            scales, axis, qw_values = weight_scales(w, q.axis, qmax, method, self.granularity), q.axis, None
        if bias is not None and mean is not None:
            w_q = qw_values if qw_values is not None else quantize_weights(w, scales, axis, qmax)
            bias = self._corrected_bias(node, q, w, dequantize_weights(w_q, scales, axis), bias, mean)
        if self.policy.int32_bias and bias is not None and fixed is None:
            scales = _fit_int32_bias(scales, bias, self.act_dq[q.activation][1])
        if qw_values is None:
            qw_values = quantize_weights(w, scales, axis, qmax)
        qw = self.const(f"{q.weight}_quantized", qw_values)
        ws = self.const(f"{q.weight}_scale", scales)
        wz = self.const(f"{q.weight}_zero_point", np.zeros(scales.shape, np.int8))
        attrs = {"axis": axis} if scales.ndim else {}
        dqo = self.node("DequantizeLinear", [qw, ws, wz], f"{q.weight}_dequantized", f"{q.weight}_DequantizeLinear",
                        **attrs)
        self.weight_dq[q.weight] = (dqo, scales)
        self.replaced.add(q.weight)
        return bias

    def _corrected_bias(self, node, q: QuantNode, w, w_deq, bias, mean) -> np.ndarray:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shift = bias_shift(q.op_type, attrs.get("group", 1), w, w_deq, mean, attrs.get("transB", 0))
        if shift is None or shift.size != bias.size:
            return bias
        bias = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(np.float32)
        self.corrected[q.bias] = bias
        return bias

    # -- bias ---------------------------------------------------------------------------------
    def bias(self, node: onnx.NodeProto, q: QuantNode, bias: np.ndarray | None) -> None:
        """int32 behind a DQ where the policy asks for it and it fits; else the corrected FP32
        bias where there is one. A bias another node also reads is left as it is."""
        if bias is None or self.uses.get(q.bias) != 1:
            return
        w_scales = self.weight_dq[q.weight][1]
        if w_scales.ndim == 0 and bias.ndim == 1:  # one weight scale per tensor: the same for every channel
            w_scales = np.full(bias.shape, w_scales, np.float32)
        if self.policy.int32_bias and bias.ndim == 1 and bias.shape[0] == w_scales.shape[0]:
            bs = (np.float32(self.act_dq[q.activation][1]) * w_scales).astype(np.float32)
            bq = np.clip(np.rint(bias.astype(np.float64) / bs), -(2**31), 2**31 - 1).astype(np.int32)
            qb = self.const(f"{q.bias}_quantized", bq)
            bsn = self.const(f"{q.bias}_scale", bs)
            bz = self.const(f"{q.bias}_zero_point", np.zeros(bs.shape, np.int32))
            node.input[2] = self.node("DequantizeLinear", [qb, bsn, bz], f"{q.bias}_dequantized",
                                      f"{q.bias}_DequantizeLinear", axis=0)
            self.replaced.add(q.bias)
        if q.bias in self.corrected and node.input[2] == q.bias:
            # a float bias (TensorRT's form, or a bias ONNX Runtime can't take as int32)
            node.input[2] = self.const(f"{q.bias}_corrected", self.corrected[q.bias])
            self.replaced.add(q.bias)

    def weighted_op(self, node: onnx.NodeProto, q: QuantNode, qmax: int, method: str,
                    means: dict[str, np.ndarray] | None) -> None:
        act_in = self.activation(q.activation)
        bias = self.array(q.bias)
        if q.weight not in self.weight_dq:
            bias = self.weight(node, q, bias, qmax, method, (means or {}).get(q.activation))
        node.input[0] = act_in
        node.input[1] = self.weight_dq[q.weight][0]
        self.bias(node, q, bias)

    def finish(self) -> None:
        graph = self.model.graph
        still_used = {i for n in self.nodes for i in n.input}
        keep = [i for i in graph.initializer if not (i.name in self.replaced and i.name not in still_used)]
        del graph.initializer[:]
        graph.initializer.extend(keep + self.new_inits)
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.value_info[:]


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, Range],
               flavor: Flavor | Policy, weight_qmax: int = 127, weight_method: str = "max",
               input_means: dict[str, np.ndarray] | None = None,
               fixed_weights: dict[str, FixedWeight] | None = None,
               weight_granularity: str = "per_channel") -> onnx.ModelProto:
    """Return a copy of ``model`` with Q/DQ pairs per ``plan`` and calibrated ``ranges``.

    ``input_means`` (tensor → per-channel mean of a weighted op's input) turns on bias
    correction: each bias absorbs the mean shift its layer's weight quantization causes.
    ``fixed_weights`` (weight initializer → :class:`FixedWeight`) are written as given instead
    of computing scales and rounding; the int32 bias and bias correction use their scales.
    ``weight_granularity``: ``per_channel`` (one scale per output channel) or ``per_tensor``."""
    pol = get_policy(flavor)
    missing = [a for a in pol.tensors(plan) if a not in ranges]
    if missing:
        raise JobError(f"no calibrated range for tensor(s) {', '.join(missing[:5])}; recalibrate")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _QDQGraph(out, pol.ranges(plan, ranges), pol, fixed_weights, weight_granularity)
    by_node = {q.node: q for q in pol.weighted(plan)}
    extra_inputs = pol.add_inputs(plan)
    for original in list(out.graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for i, name in enumerate(node.input):
            if name in extra_inputs.get(node.name, ()):
                node.input[i] = g.activation(name)
        if node.name in by_node:
            g.weighted_op(node, by_node[node.name], weight_qmax, weight_method, input_means)
        g.nodes.append(node)
    g.finish()
    onnx.checker.check_model(out)
    return out
