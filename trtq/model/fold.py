"""FP32-identical folds that real exports need before quantization: nodes whose inputs are all
constants evaluated once (a ``Reshape`` of a weight, a ``Cast`` of a constant), and each
``BatchNormalization`` that is the only reader of a Conv / ConvTranspose / Gemm output folded
into that op's weight and bias. A BatchNormalization left unfolded keeps its weighted op out of
ONNX Runtime's ``QLinearConv`` (it fuses DQ → Conv → Q only) and costs a pass of its own; one
that follows anything else is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

FOLDABLE_INTO = ("Conv", "ConvTranspose", "Gemm")
MAX_FOLDED_ELEMENTS = 1 << 24  # a constant sub-expression larger than this stays a node
NOT_CONSTANT = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor → the nodes that read it (a node reading it twice is listed twice)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            if i:
                out.setdefault(i, []).append(node)
    return out


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opsets) -> list[np.ndarray] | None:
    inits = [numpy_helper.from_array(values[i], i) for i in dict.fromkeys(node.input) if i]
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output]
    model = helper.make_model(helper.make_graph([node], "fold", [], outs, inits), opset_imports=opsets)
    try:
        got = ReferenceEvaluator(model).run(None, {})
    except Exception:  # noqa: BLE001 - what the reference evaluator cannot run is left to the runtime
        return None
    return [np.asarray(v) for v in got]


def fold_constants(model: onnx.ModelProto) -> list[str]:
    """Evaluate nodes whose inputs are all initializers; their outputs become initializers.
    Returns the folded nodes' names. Graph outputs and large results stay computed."""
    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    opsets = list(model.opset_import)
    keep, folded = [], []
    for node in graph.node:
        constant = (node.input and all(i == "" or i in values for i in node.input) and not _has_subgraph(node)
                    and node.domain in ("", "ai.onnx") and node.op_type not in NOT_CONSTANT
                    and not outputs.intersection(node.output))
        got = _evaluate(node, values, opsets) if constant else None
        if got is None or sum(v.size for v in got) > MAX_FOLDED_ELEMENTS:
            keep.append(node)
            continue
        for name, value in zip(node.output, got):
            values[name] = value
            graph.initializer.append(numpy_helper.from_array(value, name))
        folded.append(node.name)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(graph)
    return folded


def _read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the graph's nodes read, inside their subgraphs too, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _read(g)
    return names


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _read(graph) | {i.name for i in graph.input}
    keep = [i for i in graph.initializer if i.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bn_affine(bn: onnx.NodeProto, values: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of an inference BatchNormalization: y = scale · x + shift."""
    if len(bn.input) != 5 or len(bn.output) != 1 or not all(i in values for i in bn.input[1:]):
        return None
    gamma, beta, mean, var = (values[i].astype(np.float64) for i in bn.input[1:])
    eps = _attrs(bn).get("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _scaled_weight(op: onnx.NodeProto, w: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """``w`` with each output channel multiplied by ``scale`` (None when shapes do not fit)."""
    a = _attrs(op)
    w = w.astype(np.float64)
    if op.op_type == "Conv" and w.shape[0] == scale.size:
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if op.op_type == "ConvTranspose":  # W [C, K/group, ...]: output channel g·K/group + k
        group = a.get("group", 1)
        per = w.shape[1]
        if per * group != scale.size or w.shape[0] % group:
            return None
        rows = np.repeat(scale.reshape(group, per), w.shape[0] // group, axis=0)  # [C, K/group]
        return w * rows.reshape(rows.shape + (1,) * (w.ndim - 2))
    if op.op_type == "Gemm" and w.ndim == 2:
        axis = 0 if a.get("transB", 0) else 1
        if w.shape[axis] != scale.size:
            return None
        return w * (scale.reshape(-1, 1) if axis == 0 else scale.reshape(1, -1))
    return None


def _fold_one(op: onnx.NodeProto, bn: onnx.NodeProto, values: dict, graph: onnx.GraphProto) -> bool:
    affine = _bn_affine(bn, values)
    if affine is None or len(op.input) < 2 or op.input[1] not in values:
        return False
    scale, shift = affine
    if op.op_type == "Gemm":
        a = _attrs(op)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
            return False
    w = _scaled_weight(op, values[op.input[1]], scale)
    if w is None:
        return False
    bias = np.zeros(scale.size)
    if len(op.input) > 2 and op.input[2]:
        if op.input[2] not in values:
            return False
        b = values[op.input[2]].astype(np.float64) * (_attrs(op).get("beta", 1.0) if op.op_type == "Gemm" else 1.0)
        if b.size not in (1, scale.size):
            return False
        bias = np.broadcast_to(b.reshape(-1), scale.shape)
    w_name, b_name = f"{op.name}_bn_folded_weight", f"{op.name}_bn_folded_bias"
    graph.initializer.extend([numpy_helper.from_array(w.astype(np.float32), w_name),
                              numpy_helper.from_array((bias * scale + shift).astype(np.float32), b_name)])
    del op.input[1:]
    op.input.extend([w_name, b_name])
    if op.op_type == "Gemm":
        for attr in op.attribute:
            if attr.name == "beta":
                attr.f = 1.0
    op.output[0] = bn.output[0]
    return True


def _maps(graph: onnx.GraphProto) -> tuple[dict, dict, dict, set]:
    """(initializer values, tensor → readers, tensor → producer, graph output names)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return values, consumers(graph), {o: n for n in graph.node for o in n.output}, {o.name for o in graph.output}


def _channel_bias(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a per-output-channel bias of a rank-``rank`` [N, K, ...] tensor, or None."""
    if c.ndim > rank or c.size not in (1, channels):
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if c.size == 1 or (shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1)):
        return np.broadcast_to(c.reshape(-1).astype(np.float64), (channels,))
    return None


def _fold_affine(op: onnx.NodeProto, node: onnx.NodeProto, c: np.ndarray, values: dict,
                 graph: onnx.GraphProto) -> bool:
    """Fold ``node`` (a Mul or Add by the per-channel constant ``c``) into the Conv/ConvTranspose ``op``."""
    w = values[op.input[1]]
    k = w.shape[0] if op.op_type == "Conv" else w.shape[1] * _attrs(op).get("group", 1)
    per_channel = _channel_bias(c, w.ndim, k)
    has_bias = len(op.input) > 2 and op.input[2]
    if per_channel is None or c.dtype != np.float32 or (has_bias and op.input[2] not in values):
        return False
    bias = values[op.input[2]].astype(np.float64).reshape(-1) if has_bias else np.zeros(k)
    if node.op_type == "Mul":
        w = _scaled_weight(op, w, per_channel)
        if w is None:
            return False
        bias = bias * per_channel
        values[f"{op.name}_{node.name}_weight"] = w.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), f"{op.name}_{node.name}_weight"))
        op.input[1] = f"{op.name}_{node.name}_weight"
    else:
        bias = bias + per_channel
    name = f"{op.name}_{node.name}_bias"
    values[name] = bias.astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(values[name], name))
    del op.input[2:]
    op.input.append(name)
    op.output[0] = node.output[0]
    return True


def fold_channel_affine(model: onnx.ModelProto) -> list[str]:
    """Fold ``Conv → Mul/Add(constant, per channel or scalar)`` into the Conv's weight and bias
    (exports that keep the bias, or a learnable affine, as separate ops); returns the folded nodes' names."""
    graph = model.graph
    values, readers, producer, outputs = _maps(graph)
    folded: list[str] = []
    for node in list(graph.node):
        if node.op_type not in ("Add", "Mul") or len(node.input) != 2:
            continue
        for t, c in (node.input, node.input[::-1]):
            op = producer.get(t)
            if (op is None or op.op_type not in ("Conv", "ConvTranspose") or c not in values or t in outputs
                    or len(readers.get(t, [])) != 1 or len(op.input) < 2 or op.input[1] not in values):
                continue
            if _fold_affine(op, node, values[c], values, graph):
                producer[node.output[0]] = op
                folded.append(node.name)
                break
    _remove(graph, folded)
    return folded


def _pad_free(conv: onnx.NodeProto) -> bool:
    a = _attrs(conv)
    pad = a.get("auto_pad", b"NOTSET")
    return conv.op_type == "Conv" and not any(a.get("pads", [])) and pad in (b"NOTSET", b"VALID", "NOTSET", "VALID")


def fold_into_next_conv(model: onnx.ModelProto) -> list[str]:
    """Fold ``Mul/Add(scalar constant) → Conv`` into a Conv without padding (a padded border
    would see the zeros unscaled): ``W·(c·x + d) + b = (c·W)·x + (b + d·ΣW)``. Returns the folded nodes' names."""
    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    folded: list[str] = []
    for node in reversed(list(graph.node)):  # the op nearest the Conv first
        r = readers.get(node.output[0], []) if node.output else []
        if node.op_type not in ("Add", "Mul") or len(node.input) != 2 or len(r) != 1 or node.output[0] in outputs:
            continue
        conv = r[0]
        x, c = (node.input if node.input[1] in values else node.input[::-1])
        if (c not in values or values[c].size != 1 or values[c].dtype != np.float32 or x in values
                or not _pad_free(conv) or conv.input[0] != node.output[0] or conv.input[1] not in values):
            continue
        w = values[conv.input[1]].astype(np.float64)
        k = float(values[c].reshape(-1)[0])
        bias = values[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] in values else None
        if len(conv.input) > 2 and conv.input[2] and bias is None:
            continue
        bias = np.zeros(w.shape[0]) if bias is None else bias
        if node.op_type == "Mul":
            w = w * k
        else:
            bias = bias + k * w.reshape(w.shape[0], -1).sum(axis=1)
        names = (f"{conv.name}_{node.name}_weight", f"{conv.name}_{node.name}_bias")
        for name, v in zip(names, (w, bias)):
            values[name] = v.astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(values[name], name))
        del conv.input[1:]
        conv.input.extend(names)
        conv.input[0] = x
        readers[x] = [conv if n is node else n for n in readers.get(x, [])]
        folded.append(node.name)
    _remove(graph, folded)
    return folded


def _remove(graph: onnx.GraphProto, names: list[str]) -> None:
    if names:
        drop = set(names)
        keep = [n for n in graph.node if n.name not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(graph)


def fold_batchnorm(model: onnx.ModelProto) -> list[str]:
    """Fold each BatchNormalization that alone reads a Conv/ConvTranspose/Gemm output (not a
    graph output) into that op; returns the folded BatchNormalizations' names."""
    graph = model.graph
    values, readers, producer, outputs = _maps(graph)
    folded: list[str] = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or not bn.input:
            continue
        op = producer.get(bn.input[0])
        if (op is None or op.op_type not in FOLDABLE_INTO or len(readers.get(bn.input[0], [])) != 1
                or bn.input[0] in outputs):
            continue
        if _fold_one(op, bn, values, graph):
            folded.append(bn.name)
    _remove(graph, folded)
    return folded
