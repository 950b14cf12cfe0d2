"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", 2019): data-free and FP32-identical.

Two convolutions joined through positive-homogeneous ops (``Relu``, ``Identity``,
``Clip(·, 0)`` without upper bound, or nothing — a depthwise Conv straight into a pointwise
one) compute the same function when output channel c of the first is multiplied by ``e_c`` and
input channel c of the second divided by it. With ``r1_c`` the first's max |w| of output
channel c and ``r2_c`` the second's max |w| over input channel c, ``e_c = sqrt(r2_c / r1_c)``
gives both the range ``sqrt(r1_c · r2_c)``, so each weight tensor's channels move towards one
range. Chains are equalized pair by pair, in sweeps until the scales settle.

Which tensors can take the scales, and the rewrite itself, are those of activation-channel
equalization (:mod:`trtq.model.equalize`): only where both sides absorb them exactly. A
``Clip`` with an upper bound (ReLU6) between the two is refused — its bound would have to move
per channel — and :func:`find_pairs` says how many Conv inputs were left and why.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from . import equalize


@dataclass
class Pair:
    tensor: str  # the activation between them, whose channels are scaled
    producers: list[str]  # Conv node names (two for a residual Add of two Convs)
    consumers: list[str]  # Conv node names reading it


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], Counter]:
    """The Conv → Conv pairs that can be equalized, and a count of why the other Conv inputs cannot."""
    graph = model.graph
    maps = equalize.graph_maps(graph)
    producers, consumers, inits = maps
    pairs, skipped, seen = [], Counter(), set()
    for node in graph.node:
        t = node.input[0] if node.op_type == "Conv" else None
        if t is None or node.input[1] not in inits or t in seen or t not in producers:
            continue  # a graph input has nothing before it to pair with
        seen.add(t)
        nodes, why = equalize.analyse(graph, t, maps)
        if nodes and all(n.op_type == "Conv" for n in nodes):
            pairs.append(Pair(t, [n.name for n in nodes], [c.name for c in consumers[t]]))
        else:
            skipped[why or "the scales would land on " + "/".join(sorted({n.op_type for n in nodes}))
                    + ", which holds no weights to even out"] += 1
    return pairs, skipped


def out_ranges(w: np.ndarray) -> np.ndarray:
    """max |w| of each output channel of a Conv weight ``[K, C/groups, ...]``."""
    return np.abs(w).reshape(len(w), -1).max(axis=1)


def in_ranges(w: np.ndarray, groups: int, channels: int) -> np.ndarray:
    """max |w| over each input channel (``channels`` of them) of a Conv weight."""
    r = np.zeros(channels)
    np.maximum.at(r, equalize.input_channels(w.shape, groups), np.abs(w).reshape(*w.shape[:2], -1).max(axis=2))
    return r


def _scales(pairs: list[Pair], w: dict[str, np.ndarray], groups: dict[str, int], sweeps: int, tol: float):
    total = {p.tensor: np.ones(len(w[p.producers[0]])) for p in pairs}
    for sweep in range(1, sweeps + 1):
        worst = 0.0
        for p in pairs:
            r1 = np.max([out_ranges(w[n]) for n in p.producers], axis=0)
            r2 = np.max([in_ranges(w[n], groups[n], len(r1)) for n in p.consumers], axis=0)
            e = np.where((r1 > 0) & (r2 > 0), np.sqrt(r2 / np.where(r1 > 0, r1, 1.0)), 1.0)
            for n in p.producers:
                w[n] = w[n] * e.reshape(-1, *([1] * (w[n].ndim - 1)))
            for n in p.consumers:
                ch = equalize.input_channels(w[n].shape, groups[n])
                w[n] = w[n] / e[ch].reshape(*ch.shape, *([1] * (w[n].ndim - 2)))
            total[p.tensor] *= e
            worst = max(worst, float(np.abs(np.log(e)).max()))
        if worst < tol:
            break
    return total, sweep


def equalize_model(model: onnx.ModelProto, sweeps: int = 20, tol: float = 1e-4) -> tuple[onnx.ModelProto, dict]:
    """``model`` with every equalizable pair equalized, and what was done (the report's section)."""
    pairs, skipped = find_pairs(model)
    info = {"pairs": len(pairs), "sweeps": 0, "skipped": dict(skipped.most_common())}
    if not pairs:
        return model, info
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    names = {n for p in pairs for n in p.producers + p.consumers}
    w = {n: numpy_helper.to_array(inits[nodes[n].input[1]]).astype(np.float64) for n in names}
    groups = {n: int(equalize.attr(nodes[n], "group", 1)) for n in names}
    total, info["sweeps"] = _scales(pairs, w, groups, sweeps, tol)
    digest = hashlib.sha256()
    for t in sorted(total):
        digest.update(t.encode() + total[t].tobytes())
    info["scales_sha256"] = digest.hexdigest()
    return equalize.apply(model, total), info
