"""``target: tensorrt`` on a machine without TensorRT: everything that needs no GPU is done —
calibration, model.int8.onnx, calibration.cache, ranges.json, the Q/DQ model's accuracy in ONNX
Runtime — and the build ends (exit 0) with the exact commands that build the plan on a GPU machine."""

import json

import onnx
import pytest
from conftest import write_job

from trtq.calib import cache as trt_cache

TINY_TENSORS = {"input", "conv_out", "relu_out", "convt_out", "gap", "flat", "fc1_out", "fc2_out", "output"}


@pytest.fixture(autouse=True)
def _no_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return
    pytest.skip("TensorRT is installed here: the build makes a plan")


def _build(tiny, run_cli, **sections):
    job = {**tiny["job"], "quantization": {"target": "tensorrt", "exclude_nodes": ["convt"]}, **sections}
    path = write_job(tiny["dir"] / "trt.yaml", job)
    code, out, err = run_cli("build", path)
    assert code == 0, err
    folder = tiny["dir"] / "out" / "tiny"
    return path, out, folder, json.loads((folder / "report.json").read_text())


def test_explicit_build_without_tensorrt_writes_everything_but_the_plan(tiny, run_cli):
    path, out, folder, report = _build(tiny, run_cli)
    for name in ("model.int8.onnx", "calibration.cache", "ranges.json", "report.md"):
        assert (folder / name).is_file(), name
    assert not (folder / "engine.plan").exists() and not (folder / "latency.png").exists()
    eng = report["engine"]
    assert eng["built"] is False and eng["path"] is None
    assert eng["reason"] == "engine not built here: TensorRT is not installed on this machine"
    assert eng["build_on_gpu"]["trtq"] == f"trtq build {path}"
    assert eng["build_on_gpu"]["trtexec"] == (
        "trtexec --onnx=model.int8.onnx --stronglyTyped --minShapes=input:1x3x8x8 --optShapes=input:4x3x8x8 "
        "--maxShapes=input:4x3x8x8 --builderOptimizationLevel=3 --saveEngine=engine.plan")
    assert "engine.plan" not in report["artifacts"] and "latency.png" not in report["artifacts"]
    # the Q/DQ model was evaluated in ONNX Runtime; no latency was made up for it
    fid = report["int8"]["accuracy"]["fidelity"]
    assert fid["samples"] == 24 and 10 < fid["sqnr_db"] < 80
    assert "latency" not in report["int8"] and "latency_ratio" not in report
    assert "engine not built here" in out and eng["build_on_gpu"]["trtexec"] in out and f"trtq build {path}" in out
    assert "**engine not built here" in (folder / "report.md").read_text()
    # the kept-out layer is cast to FP16 by default (keep_precision: fp16)
    convt = next(n for n in onnx.load(folder / "model.int8.onnx").graph.node if n.name == "convt")
    assert convt.input[0] == "relu_out__fp16" and report["quantization"]["excluded_precision"] == "fp16"
    code, _, err = run_cli("eval", path)  # trtq eval evaluates the same way
    assert code == 0, err


def test_implicit_build_without_tensorrt_writes_the_full_cache_and_the_int8_trtexec_line(tiny, run_cli):
    _, _, folder, report = _build(tiny, run_cli, tensorrt={"mode": "implicit", "workspace_mb": 512})
    assert set(trt_cache.loads((folder / "calibration.cache").read_text()).scales) == TINY_TENSORS
    assert report["engine"]["build_on_gpu"]["trtexec"] == (
        f"trtexec --onnx={tiny['model']} --int8 --calib=calibration.cache --minShapes=input:1x3x8x8 "
        "--optShapes=input:4x3x8x8 --maxShapes=input:4x3x8x8 --memPoolSize=workspace:512M "
        "--builderOptimizationLevel=3 --saveEngine=engine.plan")
