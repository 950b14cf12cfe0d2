"""Activation-channel equalization: an FP32-identical rewrite that widens narrow channels.

A per-tensor activation scale is set by the widest channel; a channel whose values vary by less
than one quantization step becomes a constant in INT8. In front of a depthwise convolution
nothing mixes it with other channels, and a BatchNormalization behind, trained on those
near-constant values, multiplies them back up: the quantization error then swamps the output
(``docs/ARCHITECTURE.md``, "Narrow channels").

For a tensor ``t`` with per-channel scales ``s`` (>= 1 on narrow channels), the producer of ``t``
is made to output ``t · s`` and every consumer's weights on input channel ``c`` are divided by
``s_c``, so the FP32 model computes the same function. This module only rewrites when both
sides can absorb the scales *exactly*, without adding an op:

* producers: ``Conv`` (its output channel's weights and bias), ``BatchNormalization`` (scale and
  bias), ``Mul``/``Div`` by a constant (HardSwish's closing ``Div(·, 6)``), looked through a
  ``Relu``, ``Identity`` or ``Clip(·, 0)`` without upper bound (positive scaling commutes with
  them; a ``Clip`` such as ReLU6 does not), and through a
  residual ``Add`` into both of its branches when each can absorb the scales;
* consumers: ``Conv`` reading ``t`` as its data input (grouped and depthwise included).
Anything else is left alone, and :func:`absorbable` says why.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNEL_AXIS = 1


def graph_maps(graph: onnx.GraphProto):
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: i for i in graph.initializer}
    return producers, consumers, inits


def attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _absorbers(maps, outputs: set[str], tensor: str, depth: int = 0) -> tuple[list[onnx.NodeProto], str]:
    """The nodes that can take the scales for ``tensor`` — looking through single-use Relus, and
    through an Add of two activations into both branches — or why not."""
    producers, consumers, inits = maps
    node = producers.get(tensor)
    if node is not None and node.op_type == "Add" and depth < 4 and not any(i in inits for i in node.input):
        nodes = []
        for branch in node.input:  # a residual sum scales as both its terms do
            if len(consumers.get(branch, [])) != 1 or branch in outputs:
                return [], "an Add input that is read elsewhere"
            found, why = _absorbers(maps, outputs, branch, depth + 1)
            if not found:
                return [], why
            nodes += found
        return nodes, ""
    found, why = _absorber(maps, outputs, tensor)
    return ([found] if found is not None else []), why


def _absorber(maps, outputs: set[str], tensor: str) -> tuple[onnx.NodeProto | None, str]:
    """The node that can take the scales for ``tensor`` (looking through single-use Relus), or why not."""
    producers, consumers, inits = maps
    t = tensor
    while True:
        node = producers.get(t)
        if node is None:
            return None, "a graph input"
        if node.op_type in ("Relu", "Identity") or node.op_type == "Clip" and _positive_clip(node, inits):
            t = node.input[0]
            if len(consumers.get(t, [])) != 1 or t in outputs:
                return None, f"the {node.op_type}'s input is read elsewhere"
            continue
        if node.op_type == "Clip":
            return None, "a Clip with an upper bound (ReLU6): per-channel scaling would move the bound"
        if node.op_type == "Conv" and node.input[1] in inits:
            return node, ""
        if node.op_type == "BatchNormalization" and all(i in inits for i in node.input[1:3]):
            return node, ""
        k = 1 if node.op_type in ("Mul", "Div") and node.input[1] in inits else \
            0 if node.op_type == "Mul" and node.input[0] in inits else None
        if k is not None:
            c = inits[node.input[k]]
            if int(np.prod(c.dims)) == 1 or len(c.dims) >= 3:
                return node, ""
            return None, f"{node.op_type} by a constant that does not broadcast per channel"
        return None, f"produced by {node.op_type}, which cannot absorb per-channel scales exactly"


def _positive_clip(node: onnx.NodeProto, inits: dict) -> bool:
    """A ``Clip(x, 0)`` with no upper bound (or +inf): positive scaling commutes with it. (The
    model is at opset >= 13, where the bounds are inputs.)"""
    names = list(node.input[1:3]) + [""] * (3 - len(node.input))
    if not names[0] or any(n and n not in inits for n in names):
        return False  # no lower bound, or a bound computed in the graph
    hi = float(numpy_helper.to_array(inits[names[1]])) if names[1] else np.inf
    return float(numpy_helper.to_array(inits[names[0]])) == 0.0 and hi == np.inf


def analyse(graph: onnx.GraphProto, tensor: str, maps) -> tuple[list[onnx.NodeProto], str]:
    """(the producers that take ``tensor``'s scales, "") when its producer side and every reader
    can absorb them exactly; else ([], why not)."""
    _, consumers, inits = maps
    outputs = {o.name for o in graph.output}
    if tensor in outputs:
        return [], "a graph output"
    for n in consumers.get(tensor, []):
        if n.op_type != "Conv" or n.input[0] != tensor or n.input[1] not in inits:
            return [], f"also read by {n.op_type} '{n.name}'"
    return _absorbers(maps, outputs, tensor)


def absorbable(graph: onnx.GraphProto, tensor: str) -> str | None:
    """None when ``tensor`` can be equalized; else the reason it cannot."""
    nodes, why = analyse(graph, tensor, graph_maps(graph))
    return None if nodes else why


def _new_init(graph: onnx.GraphProto, base: str, value: np.ndarray) -> str:
    names = {i.name for i in graph.initializer}
    name = f"{base}_eq"
    while name in names:
        name += "_"
    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return name


def _per_channel(scales: np.ndarray, ndim: int) -> np.ndarray:
    shape = [1] * max(ndim, 2)
    shape[CHANNEL_AXIS] = -1
    return scales.reshape(shape)


def _scale_producer(graph: onnx.GraphProto, node: onnx.NodeProto, s: np.ndarray, inits: dict) -> None:
    arr = lambda i: numpy_helper.to_array(inits[node.input[i]]).astype(np.float64)  # noqa: E731
    if node.op_type == "Conv":
        w = arr(1)
        node.input[1] = _new_init(graph, node.input[1], w * s.reshape([-1] + [1] * (w.ndim - 1)))
        if len(node.input) > 2 and node.input[2]:
            node.input[2] = _new_init(graph, node.input[2], arr(2) * s)
    elif node.op_type == "BatchNormalization":
        node.input[1] = _new_init(graph, node.input[1], arr(1) * s)
        node.input[2] = _new_init(graph, node.input[2], arr(2) * s)
    else:
        k = 1 if node.input[1] in inits else 0
        c = numpy_helper.to_array(inits[node.input[k]]).astype(np.float64)
        factor = s if node.op_type == "Mul" else 1.0 / s
        if c.ndim >= 3:  # aligned to [N, C, H, W] from the right: the channel is axis ndim - 3
            shape = [1] * c.ndim
            shape[c.ndim - 3] = -1
            scaled = c * factor.reshape(shape)
        else:
            scaled = c.reshape(()) * _per_channel(factor, 4)
        node.input[k] = _new_init(graph, node.input[k], scaled)


def _scale_consumer(graph: onnx.GraphProto, node: onnx.NodeProto, s: np.ndarray, inits: dict) -> None:
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    channel = input_channels(w.shape, attr(node, "group", 1))
    w = w / s[channel].reshape(*channel.shape, *([1] * (w.ndim - 2)))
    node.input[1] = _new_init(graph, node.input[1], w)


def input_channels(shape: tuple[int, ...], groups: int) -> np.ndarray:
    """For a Conv weight ``[K, C/groups, ...]``: the input channel each ``[k, c]`` reads."""
    k, cin = shape[0], shape[1]
    return (np.arange(k)[:, None] // (k // groups)) * cin + np.arange(cin)[None, :]


def apply(model: onnx.ModelProto, scales: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with each tensor's channels multiplied by its scales at the producer and
    divided back in its consumers (the FP32 function unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for tensor, s in scales.items():
        s = np.asarray(s, np.float64)
        maps = graph_maps(graph)  # afresh for each tensor: an earlier one's rewrite renamed initializers
        nodes, why = analyse(graph, tensor, maps)
        if not nodes:
            raise ValueError(f"tensor '{tensor}' cannot be equalized: {why}")
        _, consumers, inits = maps
        for node in nodes:
            _scale_producer(graph, node, s, inits)
        for c in consumers[tensor]:
            _scale_consumer(graph, c, s, inits)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out


def widen(absmax: np.ndarray, fraction: float = 1 / 8) -> np.ndarray:
    """Per-channel scales raising every channel narrower than ``fraction`` of the widest to that
    width (1 elsewhere, and for channels that are exactly zero)."""
    absmax = np.asarray(absmax, np.float64)
    floor = absmax.max(initial=0.0) * fraction
    return np.where((absmax > 0) & (absmax < floor), floor / np.maximum(absmax, 1e-300), 1.0)
