"""Bias correction: (W_q − W)·E[x] folded into the bias."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.calib.ranges import Range
from trtq.runtime.onnxruntime import Runner, session
from trtq.calib.stats import TensorStats
from trtq.quant.qdq import insert_qdq
from trtq.model.plan import plan_quantization
from trtq.quant.weights import bias_shift


def test_gemm_shift_is_weight_error_times_input_mean():
    w = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])  # [N=3, K=2], transB=1
    w_deq = w + np.array([[0.1, 0.0], [0.0, -0.2], [0.05, 0.05]])
    mean = np.array([2.0, 10.0])
    np.testing.assert_allclose(bias_shift("Gemm", 1, w, w_deq, mean, trans_b=1), [0.2, -2.0, 0.6])
    np.testing.assert_allclose(bias_shift("Gemm", 1, w.T, w_deq.T, mean, trans_b=0), [0.2, -2.0, 0.6])


def test_depthwise_conv_shift_uses_each_channels_own_mean():
    w = np.zeros((2, 1, 2, 2))
    w_deq = w.copy()
    w_deq[0] += 0.25  # channel 0: error sums to 1.0 over its 2x2 kernel
    w_deq[1, 0, 0, 0] = -0.5
    np.testing.assert_allclose(bias_shift("Conv", 2, w, w_deq, np.array([3.0, 4.0])), [3.0, -2.0])


def test_channel_means_are_exact_and_batch_independent():
    x = np.random.default_rng(0).normal(2.0, 1.0, (10, 3, 4, 5)).astype(np.float32)
    a, b = TensorStats(1), TensorStats(1)
    a.update(x)
    for i in range(0, 10, 3):
        b.update(x[i:i + 3])
    np.testing.assert_allclose(a.channel_mean(), x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    assert np.array_equal(a.channel_sum, b.channel_sum)  # same order of additions: bit-identical


def _conv_model():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_correction_removes_the_mean_output_error_of_coarse_weights():
    model = _conv_model()
    plan = plan_quantization(model)
    x = np.random.default_rng(2).normal(3.0, 0.5, (16, 3, 8, 8)).astype(np.float32)  # inputs far from zero mean
    st = TensorStats(1)
    st.update(x)
    ranges = {"x": Range(float(np.abs(x).max()), float(x.min()), float(x.max()))}
    ref = Runner(session(model))({"x": x})[0]
    errors = {}
    for name, means in (("plain", None), ("corrected", {"x": st.channel_mean()})):
        q = insert_qdq(model, plan, ranges, "tensorrt", weight_qmax=7, input_means=means)  # 4-bit-like weights
        out = Runner(session(q, optimize=False))({"x": x})[0]
        errors[name] = np.abs((ref - out)[:, :, 1:-1, 1:-1].mean(axis=(0, 2, 3)))  # interior: no padding
    assert errors["corrected"].max() < 0.2 * errors["plain"].max()
    # the TensorRT flavour keeps an FP32 bias: the corrected one, under a new name
    q = insert_qdq(model, plan, ranges, "tensorrt", weight_qmax=7, input_means={"x": st.channel_mean()})
    conv = next(n for n in q.graph.node if n.name == "conv")
    assert conv.input[2] == "b_corrected"
    onnx.checker.check_model(q)
