"""Where the ONNX Runtime flavour puts Q/DQ: wherever ORT's CPU kernels can use it, decided from
the FP32 graph before calibration (which must collect the extra tensors' ranges).

ORT fuses a node unit ``DQ → op → Q`` into an integer kernel. So a tensor gets one Q → DQ pair
when its producer or one of its readers is an op with an INT8 kernel on the CPU (measured,
``docs/ort-placement.md``):

* weighted ops — QLinearConv, QLinearMatMul, QGemm; MatMul and Gemm whose readers are all
  float keep a float output (ORT then runs MatMulIntegerToFloat / QGemm with a float output,
  which saves the DQ);
* ``Add``/``Mul`` of two activations (QLinearAdd/QLinearMul), ``Concat`` (QLinearConcat),
  ``Sigmoid``/``LeakyRelu`` (QLinearSigmoid/QLinearLeakyRelu, table lookups),
  ``GlobalAveragePool``/``AveragePool``;
* ops that only move or select values — ``MaxPool``, ``Resize``, ``Reshape``, ``Transpose``,
  ``Flatten``, ``Squeeze``, ``Unsqueeze`` — run on uint8 once their input and output pairs have
  the same scale, so input and output share one range, the union of theirs (``shared``; the
  output's own would clip a max-pooled tensor, whose high percentiles are higher);
* ``Relu``/``Clip`` right after such an op fold into its output Q: the tensor between them stays float.

A tensor all of whose readers saturate outside an interval (HardSwish below -3, HardSigmoid
outside [-β/α, (1-β)/α], Clip, Relu, Sigmoid beyond ±8, Tanh beyond ±4) has its uint8 range
narrowed to it (``saturates``): the values cut off change no reader's output, and the rest get a
finer step.

A weighted op ORT would still run in FP32 — a ConvTranspose (no CPU QDQ fusion), a Conv whose
output stays float — gets no Q/DQ at all (``float_weighted``): dequantizing its weights on every
run and rounding its input would cost time and precision for nothing.

Everything else — HardSigmoid, Div, Pow, Sqrt, normalizations, the gated activation units of
:mod:`trtq.model.activations` as a whole — stays float, with a pair only where a neighbour is INT8.
A tensor whose producer is INT8 is read through its DQ by every reader (a float reader of the
original would keep the producer out of its fused kernel); a float producer's tensor is read
through the DQ by its INT8 readers only. Graph outputs stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper

from .activations import ELEMENTWISE, activation_units
from .fold import consumers
from .load import float_activations

BINARY = ("Add", "Mul")
INT8_OPS = ("Concat", "Sigmoid", "LeakyRelu", "GlobalAveragePool", "AveragePool")
SAME_SCALE = ("MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
FOLDS_INTO_Q = ("Relu", "Clip")
NO_INT8_KERNEL = ("ConvTranspose",)  # ORT 1.32's CPU provider does not fuse DQ → ConvTranspose → Q
FLOAT_OUTPUT_OK = ("MatMul", "Gemm")  # weighted ops ORT runs in INT8 with a float output
# float readers worth a Q on a Conv's output: elementwise activations between INT8 convolutions
FLOAT_READERS = ELEMENTWISE | {"HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus", "Mish", "Gelu"}
# unit kinds kept float as a whole; SiLU is not one: QLinearSigmoid + QLinearMul beat DQ → Sigmoid·x → Q
FLOAT_UNITS = {"gelu", "gelu_tanh", "quick_gelu", "hard_swish", "gated"}


@dataclass
class OrtPlacement:
    tensors: list[str]  # every tensor with a Q/DQ pair, in graph order
    readers: dict[str, set[str]]  # node → its inputs read through the DQ
    # tensor → the tensor whose scale it shares (the pair share the union of their ranges)
    shared: dict[str, str] = field(default_factory=dict)
    # tensor → (low, high) outside which all its readers saturate: its range is narrowed to that
    saturates: dict[str, tuple[float, float]] = field(default_factory=dict)
    units: int = 0  # gated activation units kept float as a whole
    # weighted ops ONNX Runtime would run in FP32 anyway, kept wholly float (no Q/DQ, FP32 weights)
    float_weighted: list[str] = field(default_factory=list)

    @property
    def calibrated(self) -> list[str]:
        return list(self.tensors)


class _Graph:
    def __init__(self, model: onnx.ModelProto, weighted: set[str], excluded: set[str]):
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name for i in g.initializer}
        self.readers = consumers(g)
        self.producer = {o: n for n in g.node for o in n.output}
        self.outputs = {o.name for o in g.output}
        self.weighted, self.excluded = weighted, excluded
        self.floats = set(float_activations(model))
        units = [u for u in activation_units(model) if u.kind in FLOAT_UNITS]
        self.in_unit = {n for u in units for n in u.nodes}
        self.units = len(units)
        self.is_int8 = self._spread()

    def data(self, node: onnx.NodeProto) -> list[str]:
        """The float activations among ``node``'s data inputs (not shapes, scales, indices)."""
        ins = node.input if node.op_type in BINARY + ("Concat",) else node.input[:1]
        return [i for i in ins if i in self.floats]

    def capable(self, node: onnx.NodeProto) -> bool:
        """Whether ONNX Runtime has an INT8 kernel for ``node`` once its activations come through Q/DQ."""
        if node.name in self.in_unit or node.name in self.excluded or node.op_type in self.excluded:
            return False
        if node.name in self.weighted:
            return True
        if node.op_type in BINARY + ("Concat",):  # every input an activation (no constant operand)
            return len(node.input) >= 2 - (node.op_type == "Concat") and len(self.data(node)) == len(node.input)
        return (node.op_type in INT8_OPS or node.op_type in SAME_SCALE) and bool(self.data(node))

    def _spread(self) -> dict[str, bool]:
        """Node → INT8: weighted ops, the capable ops an INT8 tensor reaches (forward, in graph
        order), and the capable ops that feed only INT8 ops (backward: their output needs a Q
        anyway, as in a squeeze-excite block between two convolutions). A Concat or Add that
        neither reaches — a recurrent state — stays float."""
        out = {n.name: n.name in self.weighted for n in self.nodes}
        for _ in range(3):
            hot: set[str] = set()
            for node in self.nodes:
                out[node.name] = out[node.name] or (self.capable(node) and any(t in hot for t in self.data(node)))
                folds = node.op_type in FOLDS_INTO_Q and node.input and node.input[0] in hot and \
                    len(self.readers.get(node.input[0], [])) == 1
                if (out[node.name] and self._quantized_out(node)) or folds:
                    hot.update(node.output)
            grew = False
            for node in reversed(self.nodes):
                readers = [r for t in node.output for r in self.readers.get(t, [])]
                if (not out[node.name] and self.capable(node) and readers
                        and not self.outputs.intersection(node.output) and all(out[r.name] for r in readers)):
                    out[node.name] = grew = True
            if not grew:
                break
        return out

    def _quantized_out(self, node: onnx.NodeProto) -> bool:
        """A weighted op's output gets a Q when a reader is (or may be) INT8 or is an elementwise
        activation (the DQ → activation → Q round trip costs less than an FP32 convolution);
        a Conv read by anything else (Slice, Pow: silero's STFT, where 8 bits of a spectrum cost
        13 dB) keeps a float output. Other INT8 ops always quantize theirs."""
        if node.name not in self.weighted:
            return True
        readers = [r for t in node.output for r in self.readers.get(t, [])]
        if node.op_type in FLOAT_OUTPUT_OK:
            return any(self.capable(r) for r in readers)
        return any(self.capable(r) or r.op_type in FLOAT_READERS or r.name in self.in_unit for r in readers)

    def int8(self, node: onnx.NodeProto) -> bool:
        return self.is_int8.get(node.name, False)

    def int8_out(self, tensor: str) -> bool:
        """Whether ``tensor`` comes out of an INT8 kernel (through a Relu/Clip folded into its Q)."""
        node = self.producer.get(tensor)
        if node is None or node.name in self.in_unit:
            return False
        if node.op_type in FOLDS_INTO_Q and node.input and self._folds(node.input[0]):
            return True
        return self.int8(node) and self._quantized_out(node)

    def _folds(self, tensor: str) -> bool:
        """A Relu/Clip reading ``tensor`` folds into the Q after it: it is the tensor's only reader
        and the tensor comes out of an INT8 kernel (in place of being quantized itself)."""
        node, readers = self.producer.get(tensor), self.readers.get(tensor, [])
        return (node is not None and len(readers) == 1 and tensor not in self.outputs
                and not self.outputs.intersection(readers[0].output) and self.int8(node) and self._quantized_out(node))


SIGMOID_EDGE, TANH_EDGE = 8.0, 4.0  # beyond these the output is within 1/1000 of its limit: under half a uint8 step


def _saturation(g: _Graph, reader: onnx.NodeProto, tensor: str, values: dict) -> tuple[float, float] | None:
    """The interval of ``tensor`` outside which ``reader``'s output no longer changes (or changes
    by less than half a uint8 step), or None."""
    inf = float("inf")
    op = reader.op_type
    if op == "HardSwish":
        return -3.0, inf
    if op == "Relu":
        return 0.0, inf
    if op == "HardSigmoid":
        a = {at.name: helper.get_attribute_value(at) for at in reader.attribute}
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else None
    if op == "Clip":
        bounds = [float(values[i].reshape(-1)[0]) if i in values and values[i].size == 1 else None
                  for i in list(reader.input[1:3]) + [""] * (3 - len(reader.input))]
        if (len(reader.input) > 1 and reader.input[1] and bounds[0] is None) or \
                (len(reader.input) > 2 and reader.input[2] and bounds[1] is None):
            return None
        return (bounds[0] if bounds[0] is not None else -inf), (bounds[1] if bounds[1] is not None else inf)
    if op == "Sigmoid":
        return -SIGMOID_EDGE, SIGMOID_EDGE
    if op == "Tanh":
        return -TANH_EDGE, TANH_EDGE
    if op == "Mul" and len(reader.input) == 2:  # x · sigmoid(x): below -8 the product is within 3e-3 of 0
        other = reader.input[1] if reader.input[0] == tensor else reader.input[0]
        gate = g.producer.get(other)
        if gate is not None and gate.op_type == "Sigmoid" and gate.input[0] == tensor:
            return -SIGMOID_EDGE, inf
    return None


def saturation_bounds(g: _Graph, tensors: list[str], values: dict) -> dict[str, tuple[float, float]]:
    """Tensor → the interval its readers saturate outside, where every reader does."""
    out = {}
    for t in tensors:
        readers = g.readers.get(t, [])
        spans = [_saturation(g, r, t, values) for r in readers]
        if readers and t not in g.outputs and all(s is not None for s in spans):
            out[t] = (min(s[0] for s in spans), max(s[1] for s in spans))
    return out


def ort_placement(model: onnx.ModelProto, weighted: set[str], excluded=frozenset()) -> OrtPlacement:
    """Q/DQ placement of the ONNX Runtime flavour; ``weighted``: the planned weighted ops' names;
    ``excluded``: node names and op types the job keeps out of INT8."""
    g = _Graph(model, weighted, set(excluded))
    kept: list[str] = []
    for _ in range(8):  # a Q/DQ in front of an op that stays FP32 only costs a round trip and the weights' precision
        more = [n.name for n in g.nodes if n.name in g.weighted and (n.op_type in NO_INT8_KERNEL or (
            n.op_type not in FLOAT_OUTPUT_OK and not g._quantized_out(n)))]
        if not more:
            break
        kept += more  # (a Conv that fed only those may now keep a float output too)
        g = _Graph(model, weighted - set(kept), set(excluded))
    kept = [n.name for n in g.nodes if n.name in set(kept)]
    graph_inputs = [i.name for i in model.graph.input if i.name not in g.inits]
    tensors, readers, shared = [], {}, {}
    for t in graph_inputs + [o for n in g.nodes for o in n.output]:
        users = g.readers.get(t, [])
        if not users or t not in g.floats or t in g.outputs:
            continue
        if len(users) == 1 and users[0].op_type in FOLDS_INTO_Q and g._folds(t):
            continue
        from_int8 = g.int8_out(t)
        reads = [u for u in users if from_int8 or (g.int8(u) and t in g.data(u))]
        if not reads:
            continue
        tensors.append(t)
        for u in reads:
            readers.setdefault(u.name, set()).add(t)
        node = g.producer.get(t)
        if node is not None and node.op_type in SAME_SCALE and node.input[0] in set(tensors):
            shared[t] = shared.get(node.input[0], node.input[0])
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in g.inits}
    bounds = saturation_bounds(g, [t for t in tensors if t not in shared], values)
    return OrtPlacement(tensors, readers, shared, saturates=bounds, units=g.units, float_weighted=kept)
