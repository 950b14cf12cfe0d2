"""What to quantize: the :class:`QuantPlan` of a model — its weighted ops (with each weight's
output-channel axis), the residual Adds and the pooling inputs that Q/DQ may go on — decided
from the FP32 graph alone, before any data is seen. Calibration collects the plan's
activations; both Q/DQ flavours place their pairs from it (:mod:`trtq.quant.qdq`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..errors import JobError
from .placement import OrtPlacement

POOLS = ("GlobalAveragePool", "AveragePool")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BRANCH_TAIL_OPS = ("Relu", "BatchNormalization")  # between a branch's last weighted op and its residual Add


def weight_axis(op_type: str, attrs: dict, weight_ndim: int) -> int:
    """Output-channel axis of a weight: Conv [K,C,R,S] → 0; ConvTranspose [C,K,R,S] → 1;
    Gemm transB=1 [N,K] → 0, transB=0 [K,N] → 1; MatMul constant B [K,N] → last axis."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    if op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if op_type == "MatMul":
        return weight_ndim - 1
    raise ValueError(f"{op_type} has no weight axis rule")


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
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (node, reason): weighted ops kept out of INT8
    adds: list[AddPoint] = field(default_factory=list)
    pools: list[tuple[str, str]] = field(default_factory=list)  # (AveragePool/GlobalAveragePool node, input)
    # control-flow node → weighted ops inside its subgraphs (not quantized)
    in_subgraphs: dict[str, int] = field(default_factory=dict)
    # calibrated for TensorRT's implicit-INT8 cache only (it asks for every tensor); no Q/DQ goes there
    cache_only: list[str] = field(default_factory=list)
    # the ONNX Runtime flavour's own placement (model/placement.py), planned for jobs that target it
    ort: OrtPlacement | None = None

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

    @property
    def calibrated(self) -> list[str]:
        """What calibration collects: the activations, the ONNX Runtime placement's other tensors,
        then the cache-only tensors."""
        seen = dict.fromkeys(self.activations)
        seen.update(dict.fromkeys(self.ort.calibrated if self.ort else ()))
        seen.update(dict.fromkeys(self.cache_only))
        return list(seen)

    @property
    def trt_tensors(self) -> list[str]:
        """The tensors a TensorRT calibration cache holds: the activations and the cache-only tensors."""
        return self.activations + [t for t in self.cache_only if t not in set(self.activations)]

    def channel_axes(self) -> dict[str, int]:
        """Axis of each weighted op's input that its weights reduce over (for bias correction)."""
        return {q.activation: (-1 if q.op_type == "MatMul" else 1) for q in self.nodes}


def subgraph_weighted_ops(graph: onnx.GraphProto) -> dict[str, int]:
    """Control-flow node (If, Loop, Scan…) of ``graph`` → the weighted ops inside its subgraphs, nested ones too."""
    def count(g: onnx.GraphProto) -> int:
        return sum((n.op_type in WEIGHTED_OPS) + sum(count(sg) for sg in _subgraphs(n)) for n in g.node)

    return {n.name or n.op_type: c for n in graph.node if (c := sum(count(sg) for sg in _subgraphs(n)))}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
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
    # what one would exclude: weighted ops, pooling, Adds of two activations (not the bias Add beside a MatMul)
    quantizable = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS or n.op_type in POOLS
                   or (n.op_type == "Add" and not any(i in inits for i in n.input))]
    for bad in exclude_nodes:
        if bad not in names:
            close = difflib.get_close_matches(bad, quantizable, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "the nodes trtq quantizes are listed by 'trtq inspect MODEL'"
            raise JobError(f"quantization.exclude_nodes: no node named '{bad}' in the model; {hint}")
    plan = QuantPlan([])
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        if node.op_type in exclude_ops or node.name in exclude_nodes:
            plan.excluded.append((node.name, "excluded by the job"))
            continue
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            plan.excluded.append((node.name, "weight is not a constant initializer"))
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            plan.excluded.append((node.name, "Gemm with transA=1"))
            continue
        w = inits[node.input[1]]
        if w.data_type != onnx.TensorProto.FLOAT or (node.op_type == "MatMul" and len(w.dims) != 2):
            plan.excluded.append((node.name, "weight is not a float32 matrix/kernel"))
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        plan.nodes.append(QuantNode(node.name, node.op_type, node.input[0], node.input[1],
                                    weight_axis(node.op_type, attrs, len(w.dims)), bias))
    if "Add" not in exclude_ops:
        plan.adds = _residual_adds(model, inits, exclude_nodes)
    plan.in_subgraphs = subgraph_weighted_ops(graph)
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
        if not _ends_in_weighted_op(producer, main):
            continue  # only residual adds closing a weighted branch
        points.append(AddPoint(node.name, main, skip))
    return points


def _ends_in_weighted_op(producer: dict, tensor: str) -> bool:
    """Whether ``tensor`` comes from a weighted op, directly or through the Relu /
    BatchNormalization that TensorRT fuses into it (Conv → BN → Add, Conv → Relu → Add)."""
    node = producer.get(tensor)
    while node is not None and node.op_type in BRANCH_TAIL_OPS:
        node = producer.get(node.input[0])
    return node is not None and node.op_type in WEIGHTED_OPS
