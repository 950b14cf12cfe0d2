"""Control flow that a constant decides, taken out of the graph.

Exports such as silero-vad's put the whole network inside ``If`` subgraphs on an input like the
sample rate (``If(sr == 16000)``). Q/DQ cannot be calibrated inside a subgraph (ONNX Runtime
cannot expose a subgraph's tensors), so when the job gives that input a constant value
(``inputs: {sr: {value: 16000}}``) and the condition depends on nothing else, the ``If`` is
replaced by the branch it would take: the branch's nodes are inlined, its initializers moved
up, its outputs renamed to the ``If``'s outputs. The FP32 model computes exactly what it did for
that value; for any other value it is not the same model, which is why only a job-given
constant can do this.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _constant_value(graph: onnx.GraphProto, tensor: str, known: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of ``tensor`` if it follows from initializers and ``known`` inputs alone."""
    producers = _producers(graph)
    needed: list[onnx.NodeProto] = []
    leaves: set[str] = set()
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in known:
            leaves.add(t)
        elif t in producers:
            node = producers[t]
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                return None
            needed.append(node)
            stack.extend(node.input)
        else:
            return None  # a graph input the job gives no value for
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes = sorted({id(n): n for n in needed}.values(), key=lambda n: order[id(n)])
    inits = [numpy_helper.from_array(np.asarray(known[t]), t) for t in sorted(leaves)]
    sub = helper.make_graph(nodes, "cond", [], [helper.make_value_info(tensor, onnx.TypeProto())], inits)
    opsets = [helper.make_opsetid("", 13)]
    try:
        return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})[0])
    except Exception:  # noqa: BLE001 - anything the reference evaluator cannot run is simply not constant here
        return None


def _inline(graph: onnx.GraphProto, index: int, branch: onnx.GraphProto) -> None:
    """Replace the node at ``index`` (an If) by ``branch``'s nodes; rename what would clash."""
    node = graph.node[index]
    taken = {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.initializer} | \
            {i.name for i in graph.input}
    rename: dict[str, str] = {}
    for t in [i.name for i in branch.initializer] + [o for n in branch.node for o in n.output]:
        if t in taken:
            new = f"{node.name or 'If'}/{t}"
            while new in taken:
                new += "_"
            rename[t] = new
            taken.add(new)
    new_nodes = []
    for n in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        for k, t in enumerate(copy.input):
            copy.input[k] = rename.get(t, t)
        for k, t in enumerate(copy.output):
            copy.output[k] = rename.get(t, t)
        new_nodes.append(copy)
    for init in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = rename.get(init.name, init.name)
        graph.initializer.append(moved)
    for out, branch_out in zip(node.output, branch.output):
        new_nodes.append(helper.make_node("Identity", [rename.get(branch_out.name, branch_out.name)], [out],
                                          name=f"{node.name or 'If'}/{out}"))
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend(kept[:index] + new_nodes + kept[index + 1:])


def fold_constant_ifs(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> list[str]:
    """Inline every top-level ``If`` whose condition follows from initializers and ``constants``
    (graph input → value), repeatedly, so nested ones exposed by an inlining fold too. Returns
    the names of the folded nodes."""
    graph = model.graph
    folded: list[str] = []
    while True:
        known = {**{i.name: numpy_helper.to_array(i) for i in graph.initializer}, **constants}
        for index, node in enumerate(graph.node):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                continue
            cond = _constant_value(graph, node.input[0], known)
            if cond is None or cond.size != 1:
                continue
            branches = {a.name: a.g for a in node.attribute}
            _inline(graph, index, branches["then_branch" if bool(cond.reshape(())) else "else_branch"])
            folded.append(node.name or f"If_{index}")
            break
        else:
            return folded
