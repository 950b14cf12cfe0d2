"""The activation patterns exporters emit, rewritten or recognised as one unit.

* HardSwish written as ``x · clip(x + 3, 0, 6) / 6`` (Add, Clip, Div/Mul, Mul — Paddle's and
  PyTorch's exports) or as ``x · HardSigmoid(x)`` (alpha 1/6, beta 0.5) becomes one
  ``HardSwish`` (the model's opset raised to 14 where it is lower; opset 13 → 14 changes no
  default behaviour). ``clip(x + 3, 0, 6) / 6`` alone becomes one HardSigmoid. One op reading
  ``x`` once matters for the INT8 engine: ONNX Runtime gives each reader of a DequantizeLinear
  its own copy, so ``x · HardSigmoid(x)`` between INT8 convolutions dequantized ``x`` twice.
* A *unit* is an elementwise region with one activation input ``x`` and one output whose ops
  read only ``x``, each other and constants, with ``x`` reaching the output along two paths
  (a gate): SiLU ``x · sigmoid(x)``, QuickGelu ``x · sigmoid(1.702 x)``, HardSwish
  ``x · HardSigmoid(x)``, GELU in its erf and tanh forms. ONNX Runtime fuses these into one
  kernel (QuickGelu, Gelu, FastGelu) when no Q/DQ sits inside them, so Q/DQ placement treats a
  unit as one op (:mod:`trtq.model.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper, version_converter

from .fold import consumers

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Sigmoid", "Tanh", "Erf", "Clip", "HardSigmoid", "Relu",
               "Neg", "Abs", "Exp"}
MAX_UNIT = 12  # nodes: the longest pattern (GELU, tanh form) has 8


@dataclass(frozen=True)
class Unit:
    kind: str  # silu, quick_gelu, hard_swish, gelu, gelu_tanh, gated
    input: str
    output: str
    nodes: tuple[str, ...]


def _scalar(values: dict, name: str) -> float | None:
    v = values.get(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _near(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.readers = consumers(model.graph)
        self.outputs = {o.name for o in model.graph.output}

    def only_reader(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        r = self.readers.get(tensor, [])
        return r[0] if len(r) == 1 and r[0].op_type == op_type and tensor not in self.outputs else None

    def other(self, node: onnx.NodeProto, tensor: str) -> str | None:
        rest = [i for i in node.input if i != tensor]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    def const_operand(self, node: onnx.NodeProto, tensor: str) -> float | None:
        other = self.other(node, tensor)
        return _scalar(self.values, other) if other is not None else None


def _hard_sigmoid_tail(g: _Graph, x: str, add: onnx.NodeProto):
    """From ``Add(x, 3)``: the Clip(0, 6) and the /6 after it, in either order with a Mul by x.
    Returns (nodes to remove, output tensor, whether x is multiplied in)."""
    if not _near(g.const_operand(add, x), 3.0):
        return None
    clip = g.only_reader(add.output[0], "Clip")
    if clip is None or len(clip.input) != 3 or not (_near(_scalar(g.values, clip.input[1]), 0.0)
                                                    and _near(_scalar(g.values, clip.input[2]), 6.0)):
        return None
    chain, t, times_x = [add, clip], clip.output[0], False
    for _ in range(2):
        r = g.readers.get(t, [])
        if len(r) != 1 or t in g.outputs:
            break
        n = r[0]
        if n.op_type == "Div" and n.input[0] == t and _near(_scalar(g.values, n.input[1]), 6.0) or \
                n.op_type == "Mul" and _near(g.const_operand(n, t), 1 / 6):
            chain.append(n)
        elif n.op_type == "Mul" and not times_x and g.other(n, t) == x:
            chain.append(n)
            times_x = True
        else:
            break
        t = n.output[0]
    scaled = any(n.op_type == "Div" or (n.op_type == "Mul" and g.other(n, chain[-1].output[0]) != x)
                 for n in chain[2:])
    return (chain, t, times_x) if scaled and len(chain) == 3 + times_x else None


def rewrite_hard_swish(model: onnx.ModelProto) -> list[str]:
    """Rewrite each ``x · clip(x+3, 0, 6) / 6`` into ``x · HardSigmoid(x)`` and each
    ``clip(x+3, 0, 6) / 6`` into ``HardSigmoid(x)``; returns the names of the new HardSigmoid nodes."""
    g = _Graph(model)
    replace: dict[str, list[onnx.NodeProto]] = {}  # first node of a pattern → its new nodes
    drop: set[str] = set()
    for add in g.graph.node:
        if add.op_type != "Add" or add.name in drop:
            continue
        for x in dict.fromkeys(add.input):
            found = _hard_sigmoid_tail(g, x, add)
            if found is None:
                continue
            chain, out, times_x = found
            hs_out = f"{add.name}_hard_sigmoid" if times_x else out
            new = [helper.make_node("HardSigmoid", [x], [hs_out], name=f"{add.name}_HardSigmoid", alpha=1 / 6, beta=0.5)]
            if times_x:
                new.append(helper.make_node("Mul", [x, hs_out], [out], name=f"{add.name}_HardSwish"))
            replace[add.name] = new
            drop.update(n.name for n in chain)
            break
    if not replace:
        return []
    nodes = []
    for n in g.graph.node:
        if n.name in replace:
            nodes.extend(replace[n.name])
        elif n.name not in drop:
            nodes.append(n)
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    return [new[0].name for new in replace.values()]


def _is_hard_swish_gate(node: onnx.NodeProto) -> bool:
    a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
    return node.op_type == "HardSigmoid" and _near(a.get("alpha", 0.2), 1 / 6) and _near(a.get("beta", 0.5), 0.5)


def hard_swish_ops(model: onnx.ModelProto) -> list[str]:
    """Replace each ``x · HardSigmoid(x)`` (alpha 1/6, beta 0.5) by one HardSwish; returns the new nodes' names."""
    g = _Graph(model)
    pairs = {}
    for hs in g.graph.node:
        mul = g.only_reader(hs.output[0], "Mul") if _is_hard_swish_gate(hs) else None
        if mul is not None and g.other(mul, hs.output[0]) == hs.input[0]:
            pairs[hs.name] = mul
    if not pairs:
        return []
    opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset.version < 14:
        converted = version_converter.convert_version(model, 14)
        model.CopyFrom(converted)
    graph = model.graph
    muls = {m.name for m in pairs.values()}
    nodes = []
    for n in graph.node:
        if n.name in pairs:
            m = pairs[n.name]
            nodes.append(helper.make_node("HardSwish", [n.input[0]], [m.output[0]], name=f"{m.name}_HardSwish"))
        elif n.name not in muls:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    return [f"{m.name}_HardSwish" for m in pairs.values()]


def _region(g: _Graph, x: str, order: dict[str, int]) -> list[onnx.NodeProto]:
    """The elementwise nodes fed only by ``x``, each other and constants (at most MAX_UNIT), in graph order."""
    tensors, nodes, grew = {x}, {}, True
    while grew and len(nodes) < MAX_UNIT:
        grew = False
        for t in list(tensors):
            for n in g.readers.get(t, []):
                if n.name in nodes or n.op_type not in ELEMENTWISE:
                    continue
                if all(i in tensors or i in g.values for i in n.input if i):
                    nodes[n.name] = n
                    tensors.update(n.output)
                    grew = True
    return sorted(nodes.values(), key=lambda n: order[n.name])


def _close(g: _Graph, x: str, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """The longest prefix of ``nodes`` (still in order) that has one output and a gate, trimmed to
    what that output depends on (GELU's tanh form holds a shorter gate, ``x + k·x³``); None when there is none."""
    for end in reversed(range(len(nodes))):
        out = nodes[end].output[0]
        keep = _needed(nodes[:end + 1], out)
        inside = {t for n in keep for t in n.output}
        leaks = [t for t in inside - {out} if t in g.outputs or any(r not in keep for r in g.readers.get(t, []))]
        two_paths = sum(t == x for n in keep for t in n.input) >= 2
        if not leaks and two_paths and len(keep) >= 2:
            return keep
    return None


def _needed(nodes: list[onnx.NodeProto], out: str) -> list[onnx.NodeProto]:
    want, keep = {out}, []
    for n in reversed(nodes):
        if want.intersection(n.output):
            keep.append(n)
            want.update(n.input)
    return keep[::-1]


def _kind(g: _Graph, x: str, nodes: list[onnx.NodeProto]) -> str:
    ops = {n.op_type for n in nodes}
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_tanh"
    if "HardSigmoid" in ops:
        return "hard_swish"
    if "Sigmoid" in ops:
        sig = next(n for n in nodes if n.op_type == "Sigmoid")
        return "silu" if sig.input[0] == x else "quick_gelu"
    return "gated"


def activation_units(model: onnx.ModelProto) -> list[Unit]:
    """The gated activation units of ``model`` (see the module's docstring), in graph order."""
    g = _Graph(model)
    order = {n.name: i for i, n in enumerate(g.graph.node)}
    taken: set[str] = set()
    units = []
    for n in g.graph.node:
        for x in n.output:
            if x in g.values or len(g.readers.get(x, [])) < 2:
                continue
            region = _region(g, x, order)
            keep = _close(g, x, [r for r in region if r.name not in taken])
            if keep is None:
                continue
            taken.update(k.name for k in keep)
            units.append(Unit(_kind(g, x, keep), x, keep[-1].output[0], tuple(k.name for k in keep)))
    return units
