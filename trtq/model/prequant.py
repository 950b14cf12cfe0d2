"""Pre-quantized models: a graph that already holds QuantizeLinear/DequantizeLinear (QAT exports,
ModelOpt, ONNX Runtime's ``quantize_static``, pytorch-quantization) is read, not calibrated.

:func:`strip` turns it into the FP32 graph the rest of trtq works on — every Q→DQ pair on an
activation removed (its scale and zero point kept in :class:`ActivationQuant`), every DQ of a
constant (int8 weights, int32 biases, FP32 weights behind Q→DQ) replaced by the FP32 values it
computes, the int8 weights kept exactly (:class:`PreQuantized` ``weights``). The FP32 graph
computes what the pre-quantized model computes without activation rounding (a Clip stands in
for a Relu/ReLU6 the quantizer folded into a uint8 pair).

:func:`tensorrt_form` is the model as TensorRT takes it: its own placement and scales, int32
bias DQs folded into FP32 constants (exact), and — only when asked — asymmetric activations
rewritten symmetric; :func:`tensorrt_problems` names what TensorRT cannot take (non-zero zero
points, uint8, per-axis activation scales, asymmetric weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from .plan import QuantPlan

QDQ = ("QuantizeLinear", "DequantizeLinear")
QOPERATOR = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "DynamicQuantizeLinear"}
INT_RANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}
NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "HardSigmoid", "Abs", "Exp", "Softplus", "ReduceL2"}
SAME_VALUES = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool"}  # a range carries over


@dataclass(frozen=True)
class ActivationQuant:
    """One activation's quantization in the pre-quantized model."""

    node: str  # the QuantizeLinear
    scale: np.ndarray  # float32, shape () or per axis
    zero_point: np.ndarray
    dtype: np.dtype  # int8 or uint8

    @property
    def per_axis(self) -> bool:
        return self.scale.size > 1

    @property
    def symmetric_int8(self) -> bool:
        return self.dtype == np.int8 and not self.zero_point.any()

    @property
    def qrange(self) -> tuple[int, int]:
        return INT_RANGE[self.dtype]


@dataclass
class PreQuantized:
    qdq: onnx.ModelProto  # the model as given (after loading), its Q/DQ untouched
    activations: dict[str, ActivationQuant]  # tensor of the FP32 graph → its quantization
    weights: dict[str, tuple[np.ndarray, np.ndarray, int]]  # FP32-graph initializer → (int8 values, scale, axis)
    asymmetric_weights: list[str] = field(default_factory=list)  # DQ nodes of weights with a zero point / uint8
    renamed: dict[str, str] = field(default_factory=dict)  # Q input → graph output it stood for


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ for n in model.graph.node)


def _const(inits: dict, name: str, node: onnx.NodeProto, what: str, path) -> np.ndarray:
    if name not in inits:
        raise ModelError(f"{path}: {node.op_type} '{node.name}': its {what} '{name}' is not a constant; trtq reads "
                         "Q/DQ models whose scales and zero points are initializers")
    return numpy_helper.to_array(inits[name])


def _qparams(node: onnx.NodeProto, inits: dict, path, dtype=np.uint8) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero point, axis) of a Q or DQ node; no zero point: 0 of ``dtype`` (uint8 for a
    QuantizeLinear, the input's type for a DequantizeLinear)."""
    scale = _const(inits, node.input[1], node, "scale", path).astype(np.float32)
    zp = _const(inits, node.input[2], node, "zero point", path) if len(node.input) > 2 and node.input[2] else \
        np.zeros((), dtype)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return scale, zp, axis


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q − zero_point) · scale``, per axis when the scale is a vector."""
    shape = [1] * q.ndim
    if scale.ndim and q.ndim:
        shape[axis % q.ndim] = -1
    return ((q.astype(np.int64) - zp.reshape(shape).astype(np.int64)).astype(np.float32)
            * scale.reshape(shape)).astype(np.float32)


def _quantize(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(round_half_even(w / scale) + zero_point)`` in zp's dtype."""
    shape = [1] * w.ndim
    if scale.ndim and w.ndim:
        shape[axis % w.ndim] = -1
    lo, hi = INT_RANGE[zp.dtype]
    q = np.rint(w.astype(np.float32) / scale.reshape(shape)) + zp.reshape(shape).astype(np.float32)
    return np.clip(q, lo, hi).astype(zp.dtype)


def _check_format(model: onnx.ModelProto, path) -> None:
    qop = [n for n in model.graph.node if n.op_type in QOPERATOR]
    if qop:
        raise ModelError(f"{path}: {qop[0].op_type} '{qop[0].name}' is in ONNX Runtime's QOperator format, which "
                         "trtq does not read; quantize in the QDQ format (quant_format=QuantFormat.QDQ) instead")


class _Stripper:
    def __init__(self, model: onnx.ModelProto, path):
        self.path = path
        self.inits = {i.name: i for i in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.activations: dict[str, ActivationQuant] = {}
        self.weights: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.asymmetric: list[str] = []
        self.folded: list[onnx.TensorProto] = []
        self.alias: dict[str, str] = {}  # DQ output → the tensor that replaces it

    def dq(self, node: onnx.NodeProto) -> None:
        src = node.input[0]
        q = self.producer.get(src)
        if src in self.inits:  # int8 weight / int32 bias behind a DQ
            values = numpy_helper.to_array(self.inits[src])
            self._constant(node, values, *_qparams(node, self.inits, self.path, values.dtype))
            return
        scale, zp, axis = _qparams(node, self.inits, self.path)
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in self.inits:  # FP32 weight → Q → DQ
            qs, qz, qa = _qparams(q, self.inits, self.path)
            self._constant(node, _quantize(numpy_helper.to_array(self.inits[q.input[0]]), qs, qz, qa), scale, zp, axis)
        elif q is not None and q.op_type == "QuantizeLinear":
            qs, qz, _ = _qparams(q, self.inits, self.path)
            if np.dtype(qz.dtype) not in INT_RANGE:
                raise ModelError(f"{self.path}: QuantizeLinear '{q.name}' quantizes to {qz.dtype}; trtq reads int8 "
                                 "and uint8 activations")
            self.activations.setdefault(q.input[0], ActivationQuant(q.name, qs, qz, np.dtype(qz.dtype)))
            self.alias[node.output[0]] = q.input[0]
        else:
            raise ModelError(f"{self.path}: DequantizeLinear '{node.name}' reads '{src}', which no QuantizeLinear "
                             "and no constant produces; trtq reads Q/DQ models in the QDQ format")

    def _constant(self, node, values: np.ndarray, scale, zp, axis: int) -> None:
        out = node.output[0]
        self.folded.append(numpy_helper.from_array(_dequantize(values, scale, zp, axis), out))
        if values.dtype in (np.int8, np.uint8):
            if values.dtype == np.int8 and not zp.any():
                self.weights[out] = (values.astype(np.int8), scale.reshape(scale.shape if scale.size > 1 else ()),
                                     axis % values.ndim if values.ndim else 0)
            else:
                self.asymmetric.append(node.name)


def strip(model: onnx.ModelProto, path="model") -> tuple[onnx.ModelProto, PreQuantized]:
    """The FP32 graph of a pre-quantized ``model`` and what its Q/DQ held (``model`` is not changed)."""
    _check_format(model, path)
    s = _Stripper(model, path)
    quantized = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            s.dq(node)
            continue
        q = next((quantized[i] for i in node.input if i in quantized), None)
        if q is not None:  # QOperator-style or hand-made: a Q that does not end in a DQ
            raise ModelError(f"{path}: QuantizeLinear '{q.name}' feeds {node.op_type} '{node.name}', not a "
                             "DequantizeLinear; trtq reads Q/DQ models in the QDQ format")
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(model)
    g = fp32.graph
    outputs = {o.name for o in g.output}
    renamed = {src: dq_out for dq_out, src in s.alias.items() if dq_out in outputs and src not in outputs
               and src not in {i.name for i in g.input}}
    alias = {k: renamed.get(v, v) for k, v in s.alias.items() if k not in renamed.values()}
    nodes = []
    for node in g.node:
        if node.op_type in QDQ:
            continue
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, renamed.get(name, name))
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
        nodes.append(node)
    for out, src in alias.items():  # a graph output that the pair cannot take the name of: an Identity
        if out in outputs:
            nodes.append(helper.make_node("Identity", [src], [out], name=f"{out}_Identity"))
    acts = {renamed.get(t, t): a for t, a in s.activations.items()}
    nodes, bounds = _keep_clip(nodes, acts)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + [t for t in s.folded if t.name in used or t.name in outputs] + bounds)
    del g.value_info[:]
    return fp32, PreQuantized(model, acts, s.weights, s.asymmetric, renamed)


def _clips_zero(a: ActivationQuant) -> bool:
    """The range starts at 0: the pair turns negatives into 0."""
    return not a.per_axis and int(a.zero_point.reshape(-1)[0]) == a.qrange[0]


def _keep_clip(nodes: list[onnx.NodeProto], acts: dict[str, ActivationQuant]
               ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A Q/DQ whose range starts at 0 clips to ``[0, (qmax − zp)·s]``: quantizers drop the Relu or
    ReLU6 in front of such a pair (ONNX Runtime's does, for uint8 — all 33 Clips of EfficientNet-
    Lite0). Where the tensor's producer is not already non-negative, a Clip to that range keeps it
    in the graph (the producer writes ``<tensor>_before_clip``), so the graph computes what the
    quantized model computes without rounding. Returns the nodes and the Clip bounds."""
    out, bounds = [], []
    for node in nodes:
        out.append(node)
        if node.op_type in NON_NEGATIVE or node.op_type == "Clip":
            continue
        for i, t in enumerate(node.output):
            a = acts.get(t)
            if a is not None and _clips_zero(a):
                hi = np.float32((a.qrange[1] - int(a.zero_point.reshape(-1)[0])) * float(a.scale.reshape(-1)[0]))
                lo_name, hi_name = f"{t}_clip_min", f"{t}_clip_max"
                bounds += [numpy_helper.from_array(np.zeros((), np.float32), lo_name),
                           numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
                node.output[i] = f"{t}_before_clip"
                out.append(helper.make_node("Clip", [node.output[i], lo_name, hi_name], [t], name=f"{t}_clip"))
    return out, bounds


def restrict_plan(plan: QuantPlan, weights: set[str], ranges: set[str] | None = None) -> QuantPlan:
    """The plan of a pre-quantized model: only the weighted ops whose weights the model quantized,
    and (``ranges``: the tensors with a range) only the Q/DQ whose activations have a range; the
    rest stays float, each dropped weighted op with its reason in ``excluded``."""
    nodes, excluded = [], list(plan.excluded)
    for q in plan.nodes:
        if q.weight not in weights:
            excluded.append((q.node, "float in the pre-quantized model"))
        elif ranges is not None and q.activation not in ranges:
            excluded.append((q.node, f"no scale for its input '{q.activation}' in the pre-quantized model"))
        else:
            nodes.append(q)
    have = (lambda t: True) if ranges is None else ranges.__contains__
    adds = [a for a in plan.adds if have(a.skip) and have(a.main)]
    pools = [(n, t) for n, t in plan.pools if have(t)]
    ort = plan.ort
    if ort is not None:  # the ONNX Runtime placement, without the pairs that have no range
        tensors = [t for t in ort.tensors if have(ort.shared.get(t, t))]
        keep, dropped = set(tensors), {q.node for q in plan.nodes} - {q.node for q in nodes}
        readers = {n: {t for t in ins if t in keep} for n, ins in ort.readers.items() if n not in dropped}
        ort = replace(ort, tensors=tensors, readers={n: v for n, v in readers.items() if v},
                      shared={t: src for t, src in ort.shared.items() if t in keep})
    return replace(plan, nodes=nodes, excluded=excluded, adds=adds, pools=pools, ort=ort)


def non_negative(model: onnx.ModelProto) -> set[str]:
    """Tensors no value of which is negative: outputs of Relu, Sigmoid, … and of a Clip whose
    minimum is a constant ≥ 0 (ReLU6)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = set()
    for node in model.graph.node:
        if node.op_type in NON_NEGATIVE:
            out.add(node.output[0])
        elif node.op_type == "Clip":
            lo = node.input[1] if len(node.input) > 1 else ""
            attr = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "min"), None)
            value = float(numpy_helper.to_array(inits[lo])) if lo in inits else attr
            if value is not None and value >= 0:
                out.add(node.output[0])
    return out


def carry_ranges(model: onnx.ModelProto, activations: dict[str, ActivationQuant]) -> dict[str, ActivationQuant]:
    """``activations`` plus the outputs of ops that only move values (Reshape, Flatten, Transpose,
    MaxPool, …) of a quantized tensor: the same scale holds for them."""
    out = dict(activations)
    for node in model.graph.node:
        if node.op_type in SAME_VALUES and node.input and node.input[0] in out:
            out.setdefault(node.output[0], out[node.input[0]])
    return out


def tensorrt_problems(pq: PreQuantized, convert_asymmetric: bool) -> list[str]:
    """What TensorRT cannot take, in graph order, one short phrase per node."""
    out = []
    for tensor, a in pq.activations.items():
        if a.per_axis:
            out.append(f"QuantizeLinear '{a.node}' ('{tensor}') has per-axis activation scales")
        elif not a.symmetric_int8 and not convert_asymmetric:
            zp = int(a.zero_point.reshape(-1)[0])
            out.append(f"QuantizeLinear '{a.node}' ('{tensor}') has {a.dtype} activations with zero point {zp}")
    out += [f"DequantizeLinear '{n}' has asymmetric (zero point or uint8) weights" for n in pq.asymmetric_weights]
    return out


def symmetric_scale(a: ActivationQuant) -> np.float32:
    """The int8 symmetric scale covering an affine activation's [min, max]: max(|min|, |max|) / 127."""
    lo, hi = a.qrange
    zp = float(a.zero_point.reshape(-1)[0])
    s = float(a.scale.reshape(-1)[0])
    return np.float32(max(abs((lo - zp) * s), abs((hi - zp) * s)) / 127.0)


def tensorrt_form(pq: PreQuantized, convert_asymmetric: bool) -> onnx.ModelProto:
    """The pre-quantized model as TensorRT takes it: its own Q/DQ placement and scales, each DQ of
    an int32 bias replaced by the FP32 constant it computes, and with ``convert_asymmetric`` each
    asymmetric activation's Q/DQ given the symmetric int8 scale of :func:`symmetric_scale`."""
    model = onnx.ModelProto()
    model.CopyFrom(pq.qdq)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_q = {a.node: a for a in pq.activations.values()}
    producer = {o: n for n in g.node for o in n.output}
    nodes, new = [], {}
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type == \
                onnx.TensorProto.INT32:
            scale, zp, axis = _qparams(node, inits, "model", np.int32)
            new[node.output[0]] = numpy_helper.from_array(
                _dequantize(numpy_helper.to_array(inits[node.input[0]]), scale, zp, axis), node.output[0])
            continue
        q = node if node.op_type == "QuantizeLinear" else producer.get(node.input[0]) if node.op_type in QDQ else None
        a = by_q.get(q.name) if q is not None else None
        if convert_asymmetric and a is not None and not a.symmetric_int8 and not a.per_axis:
            s_name, z_name = f"{q.name}_symmetric_scale", f"{q.name}_symmetric_zero_point"
            new.setdefault(s_name, numpy_helper.from_array(np.array(symmetric_scale(a), np.float32), s_name))
            new.setdefault(z_name, numpy_helper.from_array(np.zeros((), np.int8), z_name))
            node.input[1], node.input[2] = s_name, z_name
        nodes.append(node)
    if convert_asymmetric:  # an affine range that clipped negatives (a Relu the quantizer dropped): symmetric
        # int8 does not, so a Clip keeps it — named as in the FP32 graph (see _keep_clip)
        nodes, bounds = _keep_clip(nodes, {q.input[0]: by_q[q.name] for q in g.node if q.name in by_q
                                           and q.op_type == "QuantizeLinear"})
        new.update({b.name: b for b in bounds})
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + list(new.values()))
    del g.value_info[:]
    return model
