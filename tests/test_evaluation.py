"""Per-layer error, re-evaluation, latency-only bench, custom metrics, plots."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import tiny_model, write_job
from trtq.calib.ranges import Range
from trtq.runtime.onnxruntime import Runner, session
from trtq.calib.collect import collect
from trtq.model.load import expose_tensors
from trtq.calib.methods import MinMax, compute_ranges
from trtq.data.sources import Batch
from trtq.evaluation.latency import interleaved
from trtq.evaluation.per_layer import per_layer_errors
from trtq.quant.qdq import insert_qdq
from trtq.model.plan import name_nodes, plan_quantization


def _setup(n=32):
    model = tiny_model()
    name_nodes(model)
    plan = plan_quantization(model)
    x = np.random.default_rng(0).normal(size=(n, 3, 8, 8)).astype(np.float32)
    batches = [Batch({"input": x[i:i + 8]}, None, [""] * 8) for i in range(0, n, 8)]
    stats = collect(Runner(session(expose_tensors(model, plan.activations))), plan.activations, batches)
    return model, plan, batches, compute_ranges(stats, MinMax())


def _runner(m, optimize):
    return Runner(session(m, optimize=optimize))


@pytest.mark.parametrize("flavor", ["tensorrt", "onnxruntime"])
@pytest.mark.parametrize("tensor,layer", [("relu_out", "convt"), ("fc1_out", "fc2"), ("flat", "fc1")])
def test_a_deliberately_clipped_layer_is_named_first(flavor, tensor, layer):
    model, plan, batches, ranges = _setup()
    clipped = dict(ranges)
    r = ranges[tensor]
    clipped[tensor] = Range(r.amax / 20, r.min / 20, r.max / 20)
    qdq = insert_qdq(model, plan, clipped, flavor)
    result = per_layer_errors(model, qdq, plan, lambda: batches, 16, _runner)
    assert result["samples"] == 16
    assert result["worst"][0] == layer, result["layers"]
    assert [r["node"] for r in result["layers"]] == ["conv", "convt", "fc1", "fc2", "mm"]  # graph order
    row = next(r for r in result["layers"] if r["node"] == layer)
    assert row["output_sqnr_db"] < row["input_sqnr_db"]


def test_unclipped_layers_keep_high_sqnr():
    model, plan, batches, ranges = _setup()
    result = per_layer_errors(model, insert_qdq(model, plan, ranges, "tensorrt"), plan, lambda: batches, 32, _runner)
    assert all(r["output_sqnr_db"] > 25 for r in result["layers"])
    assert result["layers"][0]["input_sqnr_db"] == float("inf")  # the graph input is exact


def test_int32_bias_never_saturates_for_near_zero_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 1, 1)).astype(np.float32)
    w[1] = 1e-9  # a channel of almost-zero weights (seen in BN-folded EfficientNet stems)
    b = np.array([0.5, -6.0, 1.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    plan = plan_quantization(model)
    q = insert_qdq(model, plan, {"x": Range.symmetric(1.0)}, "onnxruntime")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    back = inits["b_quantized"].astype(np.float64) * inits["b_scale"]
    assert np.abs(inits["b_quantized"]).max() <= 2**30
    assert np.all(np.abs(back - b) <= inits["b_scale"] / 2 + 1e-12)  # within half a step: nothing saturated
    x = rng.uniform(-1, 1, (2, 2, 4, 4)).astype(np.float32)
    ref = Runner(session(model))({"x": x})[0]
    got = Runner(session(q, optimize=False))({"x": x})[0]
    assert np.abs(ref - got).max() < 0.05


def test_interleaved_runs_on_until_the_duration():
    times = interleaved({"a": lambda: None, "b": lambda: None}, warmup=0, iterations=2, duration_s=0.05)
    assert len(times["a"]) > 2 and len(times["a"]) == len(times["b"])


def test_build_writes_plots_and_a_per_layer_section(tiny, run_cli):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    folder = tiny["dir"] / "out" / "tiny"
    for png in ("latency.png", "per_layer_sqnr.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((folder / "report.json").read_text())
    assert rep["per_layer"]["samples"] == 24 and len(rep["per_layer"]["layers"]) == 5
    md = (folder / "report.md").read_text()
    assert "## Where accuracy is lost" in md and "![per-layer SQNR](per_layer_sqnr.png)" in md


def test_eval_reevaluates_without_rebuilding(tiny, run_cli, monkeypatch):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    folder = tiny["dir"] / "out" / "tiny"
    model_bytes = (folder / "model.int8.onnx").read_bytes()
    import trtq.calib.calibrate as calibrate_mod

    monkeypatch.setattr(calibrate_mod, "collect_statistics", lambda *a, **k: pytest.fail("eval must not calibrate"))
    code, out, err = run_cli("eval", tiny["job_path"], "-q", "--set", "evaluation.latency.iterations=7",
                             "--set", "evaluation.latency.batch_sizes=[1,2]")
    assert code == 0, err
    assert "trtq eval tiny" in out
    rep = json.loads((folder / "report.json").read_text())
    assert rep["fp32"]["latency"]["by_batch"]["2"]["iterations"] == 7
    assert (folder / "model.int8.onnx").read_bytes() == model_bytes


def test_eval_errors(tiny, run_cli):
    code, _, err = run_cli("eval", tiny["job_path"])
    assert code == 2 and "run 'trtq build' first" in err
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    onnx.save(tiny_model(batch="B"), tiny["model"])  # same graph, other bytes
    code, _, err = run_cli("eval", tiny["job_path"])
    assert code == 2 and "changed since" in err and len(err.strip().splitlines()) == 1


def test_custom_metric_and_fidelity_of_every_output(tiny, run_cli):
    m = tiny_model()
    m.graph.output.append(helper.make_tensor_value_info("fc1_out", onnx.TensorProto.FLOAT, ["N", 5]))
    onnx.save(m, tiny["model"])
    (tiny["dir"] / "metric.py").write_text(
        "import numpy as np\n"
        "def mean_gap(fp32, int8, labels):\n"
        "    return {'mean_gap': float(np.mean(np.abs(fp32['output'] - int8['output']))), 'n': len(labels)}\n")
    job = dict(tiny["job"])
    job["evaluation"] = dict(job["evaluation"], metric="metric.py:mean_gap")
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert code == 0, err
    rep = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert rep["custom_metric"]["n"] == 24 and rep["custom_metric"]["mean_gap"] >= 0
    assert set(rep["int8"]["accuracy"]["fidelity_by_output"]) == {"output", "fc1_out"}
    assert "## Custom metric" in (tiny["dir"] / "out" / "tiny" / "report.md").read_text()


def test_custom_metric_returning_garbage_is_a_clear_error(tiny, run_cli):
    (tiny["dir"] / "metric.py").write_text("def bad(fp32, int8, labels):\n    return 3\n")
    job = dict(tiny["job"])
    job["evaluation"] = dict(job["evaluation"], metric="metric.py:bad")
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert code == 2 and "evaluation.metric" in err and "dict of numbers" in err


def test_bench_prints_trtexec_style_statistics(tiny, run_cli, tmp_path):
    code, out, err = run_cli("bench", tiny["model"], "--batch", "1", "4", "--iterations", "5", "--warmup", "1",
                             "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "p99" in out and "per s" in out
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["by_batch"]) == {"1", "4"} and res["by_batch"]["4"]["iterations"] == 5
    code, _, err = run_cli("bench", tiny["model"], "--shape", "input=1x3")
    assert code == 2 and "NAME:1x3x224x224" in err


def test_kernel_accounting_counts_weighted_ops_only_and_names_fp32_ones(tiny, tmp_path):
    from trtq.engine.onnxruntime import build_engine
    from trtq.model.prepare import prepare

    prepared = prepare(tiny["model"])
    ranges = {t: Range.symmetric(4.0) for t in prepared.plan.activations}
    qdq = insert_qdq(prepared.model, prepared.plan, ranges, "onnxruntime")
    k = build_engine(qdq, tmp_path / "e.onnx")
    # the tiny model has 5 weighted ops (Conv, ConvTranspose, 2 Gemm, MatMul): each counted once, INT8 or FP32
    assert k["int8_weighted"] + k["fp32_weighted"] == 5, k["ops"]
    assert len(k["fp32_weighted_nodes"]) == k["fp32_weighted"]
    assert k["int8_other"] == sum(v for op, v in k["ops"].items() if op.startswith("QLinear") and op not in (
        "QLinearConv", "QLinearMatMul", "QLinearConvTranspose"))


def test_warnings_say_when_int8_is_slower_or_did_not_fuse():
    from trtq.report.assemble import warnings

    report = {"latency_ratio": {"1": 1.33, "8": 0.6},
              "engine": {"kernels": {"int8_weighted": 14, "fp32_weighted": 50, "fp32_weighted_nodes": [
                  "conv_a", "conv_b", "conv_c", "conv_d", "conv_e", "conv_f"]}},
              "quantization": {"narrow_channels": [{"tensor": "t", "at": "bn_out", "equalized": False,
                                                    "sqnr_cap_db": 8.2}]}}
    assert warnings(report) == [
        "INT8 is slower than FP32 at batch 1: 1.33× FP32's latency",
        "only 14 of 64 weighted ops run as INT8 kernels; still FP32: conv_a, conv_b, conv_c, conv_d, conv_e …",
        "narrow channels in 't' cap 'bn_out' at about 8 dB SQNR"]
    assert warnings({"latency_ratio": {"1": 0.5}, "engine": {"kernels": {"int8_weighted": 59, "fp32_weighted": 1}}}) \
        == []
