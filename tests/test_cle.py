"""Cross-layer equalization: FP32 outputs unchanged, per-channel weight ranges evened (both
weights' channel c at sqrt(r1_c · r2_c)), ReLU6 refused and counted."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_job
from trtq.model import cle


def two_convs(between: str = "Relu", groups: int = 1) -> onnx.ModelProto:
    """x[1,4,6,6] → Conv 3×3 (8 out, channel ranges spread over 1000×) → <between> → Conv (grouped)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (8, 4, 3, 3)) * np.logspace(-2, 1, 8)[:, None, None, None]
    w2 = rng.normal(0, 1, (6, 8 // groups, 1, 1)) * np.logspace(0.5, -0.5, 8 // groups)[None, :, None, None]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w1", w1), ("b1", rng.normal(0, 1, 8)), ("w2", w2), ("b2", rng.normal(0, 1, 6)))]
    act = []
    if between == "Relu":
        act = [helper.make_node("Relu", ["c1"], ["a1"], name="act")]
    elif between.startswith("Clip"):
        hi = 6.0 if between == "Clip6" else None
        inits.append(numpy_helper.from_array(np.array(0, np.float32), "lo"))
        if hi is not None:
            inits.append(numpy_helper.from_array(np.array(hi, np.float32), "hi"))
        act = [helper.make_node("Clip", ["c1", "lo"] + (["hi"] if hi is not None else []), ["a1"], name="act")]
    mid = "a1" if act else "c1"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), *act,
             helper.make_node("Conv", [mid, "w2", "b2"], ["y"], name="conv2", group=groups)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _weights(model):
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    by_node = {n.name: n for n in model.graph.node}
    return inits[by_node["conv1"].input[1]], inits[by_node["conv2"].input[1]]


@pytest.mark.parametrize("between", ["Relu", "Clip0", "none"])
def test_two_convs_keep_their_fp32_outputs_and_even_their_channel_ranges(between):
    model = two_convs(between)
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 6, 6)).astype(np.float32)
    out, info = cle.equalize_model(model)
    assert info["pairs"] == 1 and info["skipped"] == {}
    want = _run(model, x)
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    w1, w2 = _weights(model)
    r1, r2 = cle.out_ranges(w1), cle.in_ranges(w2, 1, 8)
    e1, e2 = _weights(out)
    # one pair settles in one sweep: both weights' channel c at the geometric mean of the two ranges
    np.testing.assert_allclose(cle.out_ranges(e1), np.sqrt(r1 * r2), rtol=1e-6)
    np.testing.assert_allclose(cle.in_ranges(e2, 1, 8), np.sqrt(r1 * r2), rtol=1e-6)
    spread = lambda r: r.max() / r.min()  # noqa: E731
    assert spread(cle.out_ranges(e1)) < spread(r1) / 10


def test_depthwise_into_pointwise_is_equalized_through_the_group_mapping():
    model = two_convs("Relu", groups=2)  # conv2 reads 4 input channels per group
    x = np.random.default_rng(2).normal(0, 1, (1, 4, 6, 6)).astype(np.float32)
    out, info = cle.equalize_model(model)
    want = _run(model, x)
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    w1, w2 = _weights(model)
    e1, e2 = _weights(out)
    target = np.sqrt(cle.out_ranges(w1) * cle.in_ranges(w2, 2, 8))
    np.testing.assert_allclose(cle.out_ranges(e1), target, rtol=1e-6)
    np.testing.assert_allclose(cle.in_ranges(e2, 2, 8), target, rtol=1e-6)


def test_relu6_between_the_convs_is_refused_and_counted():
    model = two_convs("Clip6")
    out, info = cle.equalize_model(model)
    assert info["pairs"] == 0
    assert info["skipped"] == {"a Clip with an upper bound (ReLU6): per-channel scaling would move the bound": 1}
    assert out is model


def test_the_job_option_equalizes_before_calibration_and_reports_it(tmp_path, run_cli):
    onnx.save(two_convs("Relu"), tmp_path / "two.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(3).normal(0, 1, (8, 4, 6, 6)).astype(np.float32))
    job = {"name": "two", "model": "two.onnx", "calibration": {"path": "data.npz", "batch_size": 1},
           "calibrator": {"method": "minmax"}, "output": "out"}
    reports = {}
    for on in (False, True):
        job["quantization"] = {"cross_layer_equalization": on}
        code, _, err = run_cli("build", write_job(tmp_path / "job.yaml", job), "-q")
        assert code == 0, err
        reports[on] = json.loads((tmp_path / "out" / "two" / "report.json").read_text())
    assert reports[False]["quantization"]["cross_layer_equalization"] is None
    assert reports[True]["quantization"]["cross_layer_equalization"]["pairs"] == 1
    assert reports[True]["calibration"]["reused_statistics"] is False  # the equalized model's values differ
