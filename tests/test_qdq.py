"""Structure of the Q/DQ graphs: every weighted op's inputs quantized, zero points 0 for
TensorRT, the weight axis TensorRT documents for each op; and the graphs run."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import tiny_model
from trtq.calib.ranges import Range
from trtq.runtime.onnxruntime import Runner, session
from trtq.calib.collect import collect
from trtq.model.load import expose_tensors
from trtq.calib.methods import MinMax, compute_ranges
from trtq.data.sources import Batch
from trtq.evaluation.metrics import sqnr_db
from trtq.quant.qdq import insert_qdq
from trtq.model.plan import name_nodes, plan_quantization

EXPECTED_AXIS = {"conv": 0, "convt": 1, "fc1": 0, "fc2": 1, "mm": 1}


def _calibrated(model, x):
    plan = plan_quantization(model)
    runner = Runner(session(expose_tensors(model, plan.activations)))
    stats = collect(runner, plan.activations, [Batch({"input": x[i:i + 4]}, None, [""] * 4) for i in range(0, len(x), 4)])
    return plan, compute_ranges(stats, MinMax())


@pytest.fixture
def setup():
    model = tiny_model()
    name_nodes(model)
    x = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    plan, ranges = _calibrated(model, x)
    return model, x, plan, ranges


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_plan_covers_every_weighted_op_with_its_axis(setup):
    _, _, plan, _ = setup
    assert {q.node: q.axis for q in plan.nodes} == EXPECTED_AXIS
    assert plan.activations == ["input", "relu_out", "flat", "fc1_out", "fc2_out", "convt_out"]
    assert plan.pools == [("gap", "convt_out")]  # pooling input: quantizable in both flavours


def test_tensorrt_flavour_structure(setup):
    model, _, plan, ranges = setup
    q = insert_qdq(model, plan, ranges, "tensorrt")
    prod = _producers(q)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for node in q.graph.node:
        if node.name in EXPECTED_AXIS:
            act_dq, w_dq = prod[node.input[0]], prod[node.input[1]]
            assert act_dq.op_type == w_dq.op_type == "DequantizeLinear"
            assert prod[act_dq.input[0]].op_type == "QuantizeLinear"
            assert inits[w_dq.input[0]].dtype == np.int8  # weights stored int8 behind a DQ
            axis = next(a.i for a in w_dq.attribute if a.name == "axis")
            assert axis == EXPECTED_AXIS[node.name]
            assert inits[w_dq.input[1]].shape == (inits[w_dq.input[0]].shape[axis],)
            if len(node.input) > 2:  # TensorRT takes FP32 bias
                assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32
    for node in q.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name
            assert np.all(inits[node.input[1]] > 0)
    # no Q/DQ on a weighted op's output unless the next layer is quantizable (convt_out feeds the pool)
    consumers = {i for n in q.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    assert not consumers & {"conv_out", "output"} and "convt_out" in consumers
    onnx.checker.check_model(q, full_check=True)


def test_activation_scale_is_amax_over_127(setup):
    model, _, plan, ranges = setup
    q = insert_qdq(model, plan, ranges, "tensorrt")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits["relu_out_scale"] == pytest.approx(ranges["relu_out"].amax / 127, rel=1e-6)


def test_onnxruntime_flavour_has_uint8_activations_and_int32_bias(setup):
    model, _, plan, ranges = setup
    q = insert_qdq(model, plan, ranges, "onnxruntime", weight_qmax=64)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits["relu_out_zero_point"].dtype == np.uint8
    assert inits["relu_out_zero_point"] == 0  # ReLU output is non-negative: zero maps to 0
    assert inits["input_zero_point"].dtype == np.uint8 and 100 < inits["input_zero_point"] < 156
    assert inits["conv.b_quantized"].dtype == np.int32
    assert np.abs(inits["conv.w_quantized"]).max() == 64


@pytest.mark.parametrize("flavor", ["tensorrt", "onnxruntime"])
def test_quantized_model_tracks_fp32(setup, flavor):
    model, x, plan, ranges = setup
    ref = Runner(session(model))({"input": x})[0]
    got = Runner(session(insert_qdq(model, plan, ranges, flavor), optimize=False))({"input": x})[0]
    assert sqnr_db(ref, got) > 25


def test_excluded_ops_and_nodes_stay_fp32():
    model = tiny_model()
    name_nodes(model)
    plan = plan_quantization(model, exclude_ops=("MatMul",), exclude_nodes=("conv",))
    assert {q.node for q in plan.nodes} == {"convt", "fc1", "fc2"}
    assert ("conv", "excluded by the job") in plan.excluded


def residual_model():
    """x → Conv(a) → Relu → Conv(b) → Add(with the Relu output) → GlobalAveragePool → Flatten → Gemm."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    w = {"a.w": rng.normal(0, 0.5, (4, 3, 3, 3)), "b.w": rng.normal(0, 0.5, (4, 4, 1, 1)),
         "fc.w": rng.normal(0, 0.5, (2, 4)), "fc.b": np.zeros(2)}
    nodes = [
        helper.make_node("Conv", ["x", "a.w"], ["a_out"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a_out"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "b.w"], ["b_out"], name="b"),
        helper.make_node("Add", ["b_out", "r"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_residual_add_and_pool_placement_per_flavour():
    model = residual_model()
    plan = plan_quantization(model)
    assert [(a.node, a.main, a.skip) for a in plan.adds] == [("add", "b_out", "r")]
    assert plan.pools == [("gap", "sum")]
    assert plan.activations == ["x", "r", "flat", "b_out", "sum"]
    ranges = {t: Range.symmetric(4.0) for t in plan.activations}
    for flavor, quantized in (("tensorrt", {"r_dequantized"}), ("onnxruntime", {"r_dequantized", "b_out_dequantized"})):
        q = insert_qdq(model, plan, ranges, flavor)
        add = next(n for n in q.graph.node if n.name == "add")
        assert {i for i in add.input if i.endswith("_dequantized")} == quantized, flavor
        gap = next(n for n in q.graph.node if n.name == "gap")
        assert gap.input[0] == "sum_dequantized"
        # one Q/DQ pair per tensor, shared by the Conv and the Add that both read 'r'
        assert sum(n.op_type == "QuantizeLinear" and n.input[0] == "r" for n in q.graph.node) == 1


def _tail_model(tail: str):
    """residual_model with ``tail`` (BatchNormalization or Relu) between Conv(b) and the Add."""
    model = residual_model()
    g = model.graph
    b = next(n for n in g.node if n.name == "b")
    b.output[0] = "b_conv"
    extra = []
    if tail == "BatchNormalization":
        for k, v in {"bn.s": 1.5, "bn.b": 0.1, "bn.m": 0.2, "bn.v": 2.0}.items():
            g.initializer.append(numpy_helper.from_array(np.full(4, v, np.float32), k))
        extra = ["bn.s", "bn.b", "bn.m", "bn.v"]
    tail_node = onnx.helper.make_node(tail, ["b_conv", *extra], ["b_out"], name="tail")
    nodes = list(g.node)
    nodes.insert(nodes.index(b) + 1, tail_node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("tail", ["BatchNormalization", "Relu"])
def test_residual_add_behind_batchnorm_or_relu_is_placed_like_a_direct_one(tail):
    # Conv → BN → Add (unfolded BN, as in Paddle exports) and Conv → Relu → Add close a weighted
    # branch too: TensorRT quantizes the skip only, ONNX Runtime both inputs
    model = _tail_model(tail)
    plan = plan_quantization(model)
    assert [(a.node, a.main, a.skip) for a in plan.adds] == [("add", "b_out", "r")]
    ranges = {t: Range.symmetric(4.0) for t in plan.activations}
    for flavor, quantized in (("tensorrt", {"r_dequantized"}), ("onnxruntime", {"r_dequantized", "b_out_dequantized"})):
        add = next(n for n in insert_qdq(model, plan, ranges, flavor).graph.node if n.name == "add")
        assert {i for i in add.input if i.endswith("_dequantized")} == quantized, flavor


def test_excluding_add_keeps_residual_adds_fp32():
    plan = plan_quantization(residual_model(), exclude_ops=("Add", "GlobalAveragePool"))
    assert plan.adds == [] and plan.pools == []


def test_onnxruntime_engine_runs_every_weighted_op_as_int8(tmp_path):
    from trtq.engine.onnxruntime import build_engine

    model = residual_model()
    plan = plan_quantization(model)
    x = np.random.default_rng(0).normal(size=(8, 3, 6, 6)).astype(np.float32)
    stats = collect(Runner(session(expose_tensors(model, plan.activations))), plan.activations,
                    [Batch({"x": x}, None, [""] * 8)])
    kernels = build_engine(insert_qdq(model, plan, compute_ranges(stats, MinMax()), "onnxruntime", 64),
                           tmp_path / "e.onnx")
    assert kernels["fp32_weighted"] == 0 and kernels["ops"].get("QLinearConv") == 2
    assert kernels["ops"].get("QLinearAdd") == 1


def test_engine_bytes_do_not_depend_on_earlier_sessions(tmp_path):
    from onnx import helper
    """ONNX Runtime names its NCHWc layout nodes from a counter other sessions advance; the engine numbers them."""
    from trtq.engine.onnxruntime import build_engine
    from trtq.runtime.onnxruntime import session

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, .3, (16, 16, 3, 3)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="kept", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="quantized", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    plan = plan_quantization(model, exclude_nodes=["kept"])
    ranges = {t: Range.symmetric(4.0) for t in plan.activations}
    qdq = insert_qdq(model, plan, ranges, "onnxruntime")
    build_engine(qdq, tmp_path / "a.onnx")
    for _ in range(3):  # other work in the same process
        session(model, optimized_path=tmp_path / "other.onnx")
    build_engine(qdq, tmp_path / "b.onnx")
    a = onnx.load(str(tmp_path / "a.onnx"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    reorders = [n.name for n in a.graph.node if n.op_type.startswith("Reorder")]
    assert reorders and all(n.rsplit("_", 1)[-1].isdigit() and "token" not in n for n in reorders)


@pytest.mark.parametrize("flavor", ["tensorrt", "onnxruntime"])
def test_fixed_weights_are_written_exactly(setup, flavor):
    """A FixedWeight's int8 values and scale (per channel, or one per tensor) reach the Q/DQ
    model's initializers bit for bit; the int32 bias is computed from the given scale."""
    from trtq.quant.weights import FixedWeight
    model, x, plan, ranges = setup
    rng = np.random.default_rng(7)
    fixed = {"conv.w": FixedWeight(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8),
                                   np.array([0.01, 0.02, 0.03, 0.04], np.float32), 0),
             "fc1.w": FixedWeight(rng.integers(-127, 128, (5, 2)).astype(np.int8), np.array(0.05, np.float32), 0)}
    q = insert_qdq(model, plan, ranges, flavor, fixed_weights=fixed)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    for node_name, weight in (("conv", "conv.w"), ("fc1", "fc1.w")):
        node = next(n for n in q.graph.node if n.name == node_name)
        w_dq = dq[node.input[1]]
        np.testing.assert_array_equal(inits[w_dq.input[0]], fixed[weight].q)
        assert inits[w_dq.input[0]].dtype == np.int8
        np.testing.assert_array_equal(inits[w_dq.input[1]], fixed[weight].scale)
        assert inits[w_dq.input[1]].shape == fixed[weight].scale.shape
        if flavor == "onnxruntime":  # bias scale = activation scale × the given weight scale
            b_dq = dq[node.input[2]]
            act_scale = inits[dq[node.input[0]].input[1]]
            np.testing.assert_array_equal(inits[b_dq.input[1]],
                                          np.broadcast_to(act_scale * fixed[weight].scale, inits[b_dq.input[1]].shape))
    Runner(session(q, optimize=False))({"input": x})  # runs
    with pytest.raises(Exception, match="do not fit"):
        insert_qdq(model, plan, ranges, flavor, fixed_weights={"conv.w": FixedWeight(
            np.zeros((4, 3), np.int8), np.array(0.1, np.float32), 0)})
