"""Model preparation (folds, activation patterns) and the ONNX Runtime flavour's placement, on
small hand-made models: every rewrite keeps the FP32 outputs, and the placement makes ONNX
Runtime form the INT8 kernels it is meant to."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calib.collect import collect
from trtq.calib.methods import MinMax, compute_ranges
from trtq.data.sources import Batch
from trtq.engine.onnxruntime import build_engine, count_kernels
from trtq.model.activations import activation_units
from trtq.model.load import expose_tensors, settle
from trtq.model.placement import ort_placement
from trtq.model.plan import name_nodes, plan_quantization
from trtq.model.simplify import simplify
from trtq.quant.qdq import insert_qdq
from trtq.runtime.onnxruntime import Runner, session

RNG = np.random.default_rng(0)
C = 4


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes, inits, shape=(2, C, 6, 6), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = settle(model, Path("t.onnx"))
    name_nodes(model)
    return model


def _run(model, x):
    return Runner(session(model))({"x": x})[0]


def _bn(name, inp, out, channels=C):
    inits = [_init(f"{name}_g", RNG.uniform(0.5, 2, channels)), _init(f"{name}_b", RNG.normal(size=channels)),
             _init(f"{name}_m", RNG.normal(size=channels)), _init(f"{name}_v", RNG.uniform(0.1, 3, channels))]
    return helper.make_node("BatchNormalization", [inp, *(i.name for i in inits)], [out], name=name,
                            epsilon=1e-3), inits


def _same(model, shape=(2, C, 6, 6)):
    """(simplified model, its steps); asserts the FP32 outputs are equal to 1e-5."""
    x = RNG.normal(size=shape).astype(np.float32)
    before = _run(model, x)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    out, done = simplify(copy, Path("t.onnx"))
    np.testing.assert_allclose(_run(out, x), before, rtol=1e-5, atol=1e-5 * float(np.abs(before).max()))
    return out, done


def _ops(model):
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "Gemm"])
def test_batchnorm_folds_into_the_op_it_alone_reads(op):
    if op == "Conv":
        w, node = RNG.normal(size=(C, C, 3, 3)), helper.make_node("Conv", ["x", "w", "b"], ["t"], pads=[1] * 4)
        shape = (2, C, 6, 6)
    elif op == "ConvTranspose":  # groups: output channel g·K/g + k must pick the right scale
        w, node = RNG.normal(size=(C, 2, 2, 2)), helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], group=2,
                                                                  strides=[2, 2])
        shape = (2, C, 6, 6)
    else:
        w, node = RNG.normal(size=(C, 5)), helper.make_node("Gemm", ["x", "w", "b"], ["t"], transB=1, beta=0.5)
        shape = (3, 5)
    bn, inits = _bn("bn", "t", "y")
    model = _model([node, bn], [_init("w", w), _init("b", RNG.normal(size=C))] + inits, shape)
    out, done = _same(model, shape)
    assert done["batchnorm"] == ["bn"] and "BatchNormalization" not in _ops(out)


def test_standalone_batchnorm_and_one_whose_input_is_read_twice_stay():
    bn1, i1 = _bn("bn1", "x", "a")  # after the graph input: nothing to fold into
    conv = helper.make_node("Conv", ["a", "w"], ["c"])
    bn2, i2 = _bn("bn2", "c", "d")  # the Conv's output is also read by the Add
    add = helper.make_node("Add", ["c", "d"], ["y"])
    model = _model([bn1, conv, bn2, add], [_init("w", RNG.normal(size=(C, C, 1, 1)))] + i1 + i2)
    out, done = _same(model)
    assert "batchnorm" not in done and _ops(out)["BatchNormalization"] == 2


def test_constant_subexpressions_fold_so_a_reshaped_weight_is_a_weight():
    shape = helper.make_node("Reshape", ["wflat", "wshape"], ["w"])
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    inits = [_init("wflat", RNG.normal(size=C * C)), numpy_helper.from_array(np.array([C, C, 1, 1], np.int64), "wshape")]
    model = _model([shape, conv], inits)
    assert [q.node for q in plan_quantization(model).nodes] == []
    out, done = _same(model)
    assert len(done["constants"]) == 1 and [q.op_type for q in plan_quantization(out).nodes] == ["Conv"]


def test_affine_constants_fold_into_the_conv_before_and_after_only_where_exact():
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Mul", ["c1", "k1"], ["m1"]), helper.make_node("Add", ["kb", "m1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r"]),
             helper.make_node("Mul", ["r", "s"], ["m2"]), helper.make_node("Add", ["m2", "d"], ["a2"]),
             helper.make_node("Conv", ["a2", "w2"], ["c2"]),  # 1×1, no padding: takes the scalar affine
             helper.make_node("Mul", ["c2", "s"], ["m3"]), helper.make_node("Relu", ["m3"], ["r3"]),
             helper.make_node("Add", ["r3", "d"], ["a3"]),
             helper.make_node("Conv", ["a3", "w3"], ["y"], pads=[1] * 4)]  # padded: the Add stays
    inits = [_init("w1", RNG.normal(size=(C, C, 3, 3))), _init("b1", RNG.normal(size=C)),
             _init("k1", RNG.uniform(0.5, 2, (1, C, 1, 1))), _init("kb", RNG.normal(size=(C, 1, 1))),
             _init("s", [1.7]), _init("d", [-0.3]), _init("w2", RNG.normal(size=(C, C, 1, 1))),
             _init("w3", RNG.normal(size=(C, C, 3, 3)))]
    out, done = _same(_model(nodes, inits))
    assert _ops(out) == {"Conv": 3, "Relu": 2, "Add": 1}
    assert len(done["affine"]) == 3 and len(done["into_conv"]) == 2


@pytest.mark.parametrize("form", ["paddle", "pytorch", "reciprocal", "hard_sigmoid_times_x"])
def test_hard_swish_forms_become_one_hard_swish(form):
    three, zero, six, sixth = (_init(n, [v]) for n, v in (("three", 3), ("zero", 0), ("six", 6), ("sixth", 1 / 6)))
    pre = [helper.make_node("Add", ["x", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["c"])]
    tails = {"paddle": [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["h"])],
             "pytorch": [helper.make_node("Div", ["c", "six"], ["g"]), helper.make_node("Mul", ["x", "g"], ["h"])],
             "reciprocal": [helper.make_node("Mul", ["c", "sixth"], ["g"]), helper.make_node("Mul", ["g", "x"], ["h"])]}
    nodes = pre + tails[form] if form in tails else [
        helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["x", "g"], ["h"])]
    nodes.append(helper.make_node("Relu", ["h"], ["y"]))
    model = _model(nodes, [three, zero, six, sixth])
    x = np.linspace(-5, 5, 2 * C * 36, dtype=np.float32).reshape(2, C, 6, 6)  # all three pieces of the curve
    before = _run(model, x)
    out, done = simplify(model, Path("t.onnx"))
    np.testing.assert_allclose(_run(out, x), before, atol=1e-6)
    assert _ops(out) == {"HardSwish": 1, "Relu": 1} and len(done["hard_swish"]) == 1
    assert next(o.version for o in out.opset_import if o.domain == "") == 14


def test_hard_sigmoid_written_out_becomes_one_op():
    nodes = [helper.make_node("Add", ["x", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["c"]),
             helper.make_node("Div", ["c", "six"], ["y"])]
    model = _model(nodes, [_init("three", [3]), _init("zero", [0]), _init("six", [6])])
    out, done = _same(model)
    assert _ops(out) == {"HardSigmoid": 1} and "hard_swish" not in done


def test_a_model_without_patterns_is_returned_byte_for_byte():
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                   [_init("w", RNG.normal(size=(C, C, 1, 1)))])
    before = model.SerializeToString()
    out, done = simplify(model, Path("t.onnx"))
    assert done == {} and out.SerializeToString() == before


def _gelu_erf():
    return [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["f"]), helper.make_node("Mul", ["x", "f"], ["g"]),
            helper.make_node("Mul", ["g", "half"], ["y"])]


def _gelu_tanh():
    return [helper.make_node("Pow", ["x", "three"], ["p"]), helper.make_node("Mul", ["p", "k"], ["q"]),
            helper.make_node("Add", ["x", "q"], ["r"]), helper.make_node("Mul", ["r", "c"], ["s"]),
            helper.make_node("Tanh", ["s"], ["t"]), helper.make_node("Add", ["t", "one"], ["u"]),
            helper.make_node("Mul", ["x", "half"], ["v"]), helper.make_node("Mul", ["v", "u"], ["y"])]


@pytest.mark.parametrize("kind, nodes", [
    ("silu", [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]),
    ("quick_gelu", [helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("Sigmoid", ["a"], ["s"]),
                    helper.make_node("Mul", ["s", "x"], ["y"])]),
    ("gelu", _gelu_erf()),
    ("gelu_tanh", _gelu_tanh()),
])
def test_gated_activation_units_are_recognised_whole(kind, nodes):
    inits = [_init("sqrt2", [2 ** 0.5]), _init("one", [1]), _init("half", [0.5]), _init("k", [1.702]),
             _init("three", [3]), _init("c", [(2 / np.pi) ** 0.5])]
    conv = helper.make_node("Conv", ["in", "w"], ["x"])
    nodes = [conv] + [helper.make_node(n.op_type, list(n.input), list(n.output)) for n in nodes]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("in", TensorProto.FLOAT, [1, C, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits + [_init("w", RNG.normal(size=(C, C, 1, 1)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    name_nodes(model)
    units = activation_units(model)
    assert [(u.kind, u.input, u.output, len(u.nodes)) for u in units] == [(kind, "x", "y", len(nodes) - 1)]


def _conv_silu_conv():
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Sigmoid", ["c1"], ["s"]), helper.make_node("Mul", ["c1", "s"], ["a"]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    inits = [_init("w1", RNG.normal(size=(8, C, 3, 3)) * 0.3), _init("b1", RNG.normal(size=8)),
             _init("w2", RNG.normal(size=(8, 8, 3, 3)) * 0.2), _init("b2", RNG.normal(size=8))]
    return _model(nodes, inits, ("N", C, 8, 8))


def _ort_qdq(model, shape):
    plan = plan_quantization(model)
    plan.ort = ort_placement(model, {q.node for q in plan.nodes})
    x = RNG.normal(size=(8, *shape[1:])).astype(np.float32)
    stats = collect(Runner(session(expose_tensors(model, plan.calibrated))), plan.calibrated,
                    [Batch({"x": x}, None, [""] * 8)])
    ranges = compute_ranges(stats, MinMax())
    return plan, ranges, insert_qdq(model, plan, ranges, "onnxruntime")


def test_onnxruntime_flavour_makes_both_convs_around_a_silu_qlinearconv(tmp_path):
    model = _conv_silu_conv()
    plan, ranges, qdq = _ort_qdq(model, (8, C, 8, 8))
    # the first Conv's output is quantized (its Q is what makes it a QLinearConv), the Relu folds into the
    # second Conv's output Q, and SiLU runs as QLinearSigmoid + QLinearMul
    assert set(plan.ort.tensors) == {"x", "c1", "s", "a", "r"}
    kernels = build_engine(qdq, tmp_path / "e.onnx")
    ops = kernels["ops"]
    assert ops["QLinearConv"] == 2 and kernels["fp32_weighted"] == 0 and kernels["int8_weighted"] == 2
    assert ops["QLinearSigmoid"] == 1 and ops["QLinearMul"] == 1  # (the pool writes a graph output: float)
    assert "Conv" not in ops and "Sigmoid" not in ops
    # the TensorRT flavour of the same plan keeps NVIDIA's placement: inputs of weighted ops and the pool only
    trt = insert_qdq(model, plan, ranges, "tensorrt")
    quantized = {n.input[0] for n in trt.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "a", "r"}


def test_a_recurrent_state_far_from_any_weighted_op_stays_float():
    # Concat and Add have INT8 kernels, but with no INT8 tensor reaching them a Q/DQ would only add error
    nodes = [helper.make_node("Sigmoid", ["x"], ["h"]), helper.make_node("Concat", ["h", "x"], ["cat"], axis=1),
             helper.make_node("Add", ["cat", "cat"], ["y"])]
    model = _model(nodes, [])
    assert ort_placement(model, set()).tensors == []


def test_a_conv_read_by_a_slice_stays_wholly_float():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Slice", ["c", "st", "en", "ax"], ["sl"]), helper.make_node("Pow", ["sl", "two"], ["y"])]
    inits = [_init("w", RNG.normal(size=(C, C, 1, 1))), _init("two", [2.0])] + [
        numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("st", 0), ("en", 2), ("ax", 1))]
    model = _model(nodes, inits)
    plan = plan_quantization(model)
    # ORT would run it in FP32 (no Q on its output): no Q/DQ on its input, FP32 weights
    placed = ort_placement(model, {q.node for q in plan.nodes})
    assert placed.tensors == [] and placed.float_weighted == [plan.nodes[0].node]


def test_a_conv_transpose_between_int8_convs_is_kept_float(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["t"], strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["r2"]), helper.make_node("Conv", ["r2", "w2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["y"])]
    inits = [_init("w1", RNG.normal(size=(8, C, 1, 1))), _init("wt", RNG.normal(size=(8, 8, 2, 2)) * 0.3),
             _init("w2", RNG.normal(size=(8, 8, 1, 1)) * 0.3)]
    model = _model(nodes, inits, ("N", C, 4, 4))
    plan, _, qdq = _ort_qdq(model, (8, C, 4, 4))
    assert plan.ort.float_weighted == ["ConvTranspose_2"]
    transpose = next(n for n in qdq.graph.node if n.op_type == "ConvTranspose")
    assert transpose.input[1] == "wt"  # FP32 weights, not dequantized on every run
    kernels = build_engine(qdq, tmp_path / "e.onnx")
    # the Conv whose Relu writes the graph output still gets its Q (before the Relu)
    assert kernels["ops"]["QLinearConv"] == 2 and kernels["fp32_weighted"] == 1


def test_kernel_accounting_counts_weighted_ops_only():
    # an optimized graph as ORT writes it: one INT8 conv, one FP32 conv, an INT8 MatMul of two activations
    inits = [numpy_helper.from_array(np.zeros((2, 2, 1, 1), np.int8), "wq"), _init("ws", [1.0]),
             numpy_helper.from_array(np.zeros(1, np.int8), "wz"), _init("wf", np.zeros((2, 2, 1, 1)))]
    nodes = [helper.make_node("QLinearConv", ["a", "s", "z", "wq", "ws", "wz", "s", "z"], ["b"], name="q"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq"),
             helper.make_node("Conv", ["b2", "wd"], ["c"], name="slow_conv"),
             helper.make_node("MatMulIntegerToFloat", ["c8", "d8", "s", "s"], ["e"], name="qk", domain="com.microsoft"),
             helper.make_node("QLinearAdd", ["e8", "s", "z", "f8", "s", "z", "s", "z"], ["g"], name="add",
                              domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [], [], inits)
    k = count_kernels(helper.make_model(graph))
    assert (k["int8_weighted"], k["fp32_weighted"], k["int8_other"]) == (1, 1, 2)
    assert k["fp32_weighted_nodes"] == ["slow_conv"]
