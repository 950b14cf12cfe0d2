"""Stored statistics, multi-pass collection and cache conversions, end to end."""

import json

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import write_job


def _ranges(tiny):
    return json.loads((tiny["dir"] / "out" / "tiny" / "ranges.json").read_text())


def test_rebuild_reuses_statistics_and_a_new_method_only_rederives(tiny, run_cli, monkeypatch):
    assert run_cli("build", tiny["job_path"])[0] == 0
    first = _ranges(tiny)
    import trtq.calib.calibrate as calibrate_mod

    def no_inference(*a, **k):
        raise AssertionError("the model was run again")

    monkeypatch.setattr(calibrate_mod, "collect_statistics", no_inference)
    code, _, err = run_cli("build", tiny["job_path"], "--set", "calibration.batch_size=3")
    assert code == 0, err
    assert "reusing calibration statistics of 24 samples" in err
    assert _ranges(tiny) == first
    code, _, err = run_cli("build", tiny["job_path"], "-q", "--set", "calibrator.method=entropy")
    assert code == 0, err
    rep = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert rep["calibration"]["reused_statistics"] is True and rep["calibration"]["method"]["method"] == "entropy"
    assert _ranges(tiny)["data_fingerprint"] == first["data_fingerprint"]


def test_changed_data_or_force_collects_again(tiny, run_cli):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    x = tiny["x"].copy()
    x[0] *= 2
    np.savez(tiny["dir"] / "data.npz", input=x, labels=np.zeros(24, np.int64))
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    rep = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert rep["calibration"]["reused_statistics"] is False
    assert run_cli("build", tiny["job_path"], "-q", "--force")[0] == 0
    assert json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())["calibration"]["reused_statistics"] is False


def test_several_passes_under_a_small_memory_budget_give_the_same_ranges(tiny, run_cli):
    job = dict(tiny["job"])
    job.pop("evaluation")
    job["calibration"] = {"path": "data.npz", "batch_size": 8}
    assert run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q", "--force")[0] == 0
    one_pass = (tiny["dir"] / "out" / "tiny" / "ranges.json").read_bytes()
    job["calibration"]["memory_budget_mb"] = 16
    job["calibration"]["batch_size"] = 100_000  # 100k × 768 B per sample of "input" alone > 16 MiB: several passes
    job["calibration"]["max_samples"] = 24
    assert run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q", "--force")[0] == 0
    rep = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert rep["calibration"]["passes"] > 1
    assert (tiny["dir"] / "out" / "tiny" / "ranges.json").read_bytes() == one_pass


def test_group_tensors_respects_the_budget():
    from conftest import tiny_model
    from trtq.calib.collect import group_tensors, tensor_elements
    import onnx

    m = tiny_model()
    sizes = tensor_elements(onnx.shape_inference.infer_shapes(m), ["input", "relu_out", "flat"])
    assert sizes == {"input": 192, "relu_out": 256, "flat": 2}
    m = onnx.shape_inference.infer_shapes(m)
    assert group_tensors(m, ["input", "relu_out", "flat"], 1, 10_000) == [["input", "relu_out", "flat"]]
    assert group_tensors(m, ["input", "relu_out", "flat"], 1, 1100) == [["input"], ["relu_out", "flat"]]
    assert group_tensors(m, ["input", "relu_out", "flat"], 1, 1000) == [["input"], ["relu_out"], ["flat"]]


def test_cache_round_trips_through_the_qdq_model(tiny, run_cli, tmp_path):
    # a cache holds scales only: the Q/DQ model it rebuilds equals a build without bias correction
    assert run_cli("build", tiny["job_path"], "-q", "--set", "quantization.bias_correction=false")[0] == 0
    folder = tiny["dir"] / "out" / "tiny"
    code, out, err = run_cli("cache", "from-qdq", folder / "model.int8.onnx", "-o", tmp_path / "back.cache")
    assert code == 0, err
    assert (tmp_path / "back.cache").read_bytes() == (folder / "calibration.cache").read_bytes()
    code, out, err = run_cli("cache", "to-qdq", tiny["model"], folder / "calibration.cache", "-o", tmp_path / "back.onnx")
    assert code == 0, err
    assert (tmp_path / "back.onnx").read_bytes() == (folder / "model.int8.onnx").read_bytes()
    code, out, _ = run_cli("cache", "show", folder / "calibration.cache")
    assert code == 0 and "6 tensors" in out


def test_cache_for_another_model_is_a_clear_error(tiny, run_cli):
    from pathlib import Path

    real = Path(__file__).parent / "data" / "trt8510_mnist_torch.cache"
    code, _, err = run_cli("cache", "to-qdq", tiny["model"], real, "-o", tiny["dir"] / "x.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no scale for 6 of the 6 tensors" in err and "input, relu_out, flat" in err
    assert not (tiny["dir"] / "x.onnx").exists()


def test_from_qdq_refuses_the_affine_onnxruntime_flavour(tiny, run_cli):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    code, _, err = run_cli("cache", "from-qdq", tiny["dir"] / "out" / "tiny" / "engine.ort.onnx")
    assert code == 2 and ("non-zero zero point" in err or "no activation QuantizeLinear" in err)


def test_to_qdq_reads_bare_zero_scales_and_refuses_infinite_ones(tiny, run_cli, tmp_path):
    # TensorRT 10 writes a zero scale as a bare "0" (zero range → amax 1, as trtq's own zero ranges);
    # a +inf scale (7f800000) cannot become a Q/DQ scale: one line naming the tensor, no file
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    lines = (tiny["dir"] / "out" / "tiny" / "calibration.cache").read_text().splitlines()
    zero = [ln if not ln.startswith("relu_out:") else "relu_out: 0" for ln in lines]
    (tmp_path / "zero.cache").write_text("\n".join(zero) + "\n")
    code, out, err = run_cli("cache", "to-qdq", tiny["model"], tmp_path / "zero.cache", "-o", tmp_path / "z.onnx")
    assert code == 0, err
    assert "1 tensor(s) have a zero scale in the cache (a zero range) and get amax 1" in out and "relu_out" in out
    scales = {i.name: i for i in onnx.load(tmp_path / "z.onnx").graph.initializer}
    assert float(numpy_helper.to_array(scales["relu_out_scale"])) == np.float32(1 / 127)
    inf = [ln if not ln.startswith("flat:") else "flat: 7f800000" for ln in lines]
    (tmp_path / "inf.cache").write_text("\n".join(inf) + "\n")
    code, _, err = run_cli("cache", "to-qdq", tiny["model"], tmp_path / "inf.cache", "-o", tmp_path / "i.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tensor 'flat' has scale inf" in err and not (tmp_path / "i.onnx").exists()
    code, out, err = run_cli("cache", "show", tmp_path / "inf.cache")
    assert code == 0 and "inf" in out
