"""AdaRound: learned rounding beats nearest rounding on a fixed case, the sampled Conv patches
are the rows the weights multiply, and the job option writes its int8 weights as learned."""

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conftest import job_with
from trtq.calib.layer_inputs import LayerRows, geometry
from trtq.quant.adaround import fixed_weight, learn_rounding
from trtq.quant.weights import per_channel_scales, quantize_weights


def _fixed_case():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (16, 72)).astype(np.float32)
    x = np.maximum(rng.normal(0, 1, (512, 72)) @ rng.normal(0, 1, (72, 72)), 0).astype(np.float32)
    return w, x, per_channel_scales(w, 0, 127)


def test_learned_rounding_lowers_the_reconstruction_error_against_nearest():
    w, x, s = _fixed_case()
    r = learn_rounding(w[None], x[None], s[None], 127, 300)
    nearest = quantize_weights(w, s, 0)
    err = lambda q: float((((w - q * s[:, None]) @ x.T) ** 2).sum() / len(x))  # noqa: E731  ‖(W − W̃) X‖² / N
    assert abs(r.nearest_error / err(nearest) - 1) < 1e-3 and abs(r.learned_error / err(r.q[0]) - 1) < 1e-3
    assert err(r.q[0]) < 0.7 * err(nearest)  # measured 0.52x with these settings
    assert np.abs(r.q[0].astype(int) - nearest).max() == 1  # only up-or-down choices differ
    assert np.abs(r.q[0].astype(int) - np.floor(w / s[:, None])).max() <= 1


def test_conv_patches_times_the_weights_are_the_conv_outputs():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    x = rng.normal(0, 1, (2, 3, 9, 7)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1], dilations=[1, 2])
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    y = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows = LayerRows(geometry(node, w.shape), rows=10 ** 6, per_sample=10 ** 6, seed=0)
    rows.add(x)
    got = rows.matrix() @ w.reshape(4, -1).T  # every position of both samples, in order
    np.testing.assert_allclose(got, y.transpose(0, 2, 3, 1).reshape(-1, 4), rtol=1e-5, atol=1e-5)


def test_grouped_layers_are_learned_per_group_and_keep_the_weight_shape():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.2, (6, 1, 3, 3)).astype(np.float32)  # depthwise, 6 groups
    x = rng.normal(0, 1, (256, 6 * 9)).astype(np.float32)
    s = per_channel_scales(w, 0, 127)
    fixed, result = fixed_weight(w, 0, 6, x, s, 127, 200)
    assert fixed.q.shape == w.shape and fixed.q.dtype == np.int8 and fixed.axis == 0
    assert result.learned_error <= result.nearest_error


def test_the_job_option_writes_the_learned_int8_weights(tiny, run_cli):
    path = job_with(tiny, quantization__adaround=True, quantization__adaround_samples=64)
    code, _, err = run_cli("build", path, "-q")
    assert code == 0, err
    folder = tiny["dir"] / "out" / "tiny"
    report = json.loads((folder / "report.json").read_text())
    assert report["quantization"]["adaround"]["127"]["layers"] == 4  # Conv, Gemm ×2, MatMul (not ConvTranspose)
    learned = np.load(folder / "adaround.npz")
    model = onnx.load(str(folder / "model.int8.onnx"))
    written = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.array_equal(written["conv.w_quantized"], learned["conv.w/q"])
    assert run_cli("eval", path, "-q")[0] == 0  # rebuilt from adaround.npz
