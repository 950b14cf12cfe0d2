"""Every OCR / VAD model in ../shared/models builds as shipped from its job in configs/real, on
data the repository makes (rendered text, synthetic speech with the model's own states)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, need_shared

sys.path.insert(0, str(ROOT / "examples"))

FAST = ["--set", "evaluation.latency.iterations=3", "--set", "evaluation.latency.warmup=1",
        "--set", "evaluation.per_layer_samples=2"]


@pytest.fixture(scope="module")
def ocr_data(tmp_path_factory):
    import ocr_data

    out = tmp_path_factory.mktemp("ocr")
    ocr_data.write(out, pages=2, lines=8, page_size=(320, 224))
    return out


@pytest.mark.parametrize("job, model, data", [
    ("ppocr_det", "ch_PP-OCRv4_det_infer.onnx", "pages"),
    ("ppocr_rec", "ch_PP-OCRv4_rec_infer.onnx", "lines"),
    ("ppocr_cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "direction"),
])
def test_ocr_models_build(job, model, data, ocr_data, run_cli, tmp_path):
    need_shared("models", model)
    folder = ocr_data / data
    code, _, err = run_cli("build", ROOT / "configs" / "real" / f"{job}.yaml", "-q", "--out", tmp_path,
                           "--set", f"calibration.path={folder}", "--set", f"evaluation.path={folder}",
                           "--set", "calibration.batch_size=2", "--set", "evaluation.batch_size=2", *FAST)
    assert code == 0, err
    rep = json.loads((tmp_path / job / "report.json").read_text())
    assert rep["quantization"]["quantized_nodes"] > 40
    assert rep["int8"]["accuracy"]["fidelity"]["sqnr_db"] > 10  # INT8 follows FP32 (not a broken engine)
    if job == "ppocr_cls":
        assert rep["fp32"]["accuracy"]["top1"] == 1.0 and rep["int8"]["accuracy"]["top1"] >= 0.75


@pytest.mark.parametrize("job, model", [("silero_vad", "silero_vad.onnx"),
                                        ("silero_vad_op15", "silero_vad_16k_op15.onnx")])
def test_vad_models_build_with_their_state_fed_back(job, model, run_cli, tmp_path, monkeypatch):
    need_shared("models", model)
    monkeypatch.setenv("TRTQ_VAD_SECONDS", "4")
    code, _, err = run_cli("build", ROOT / "configs" / "real" / f"{job}.yaml", "-q", "--out", tmp_path, *FAST)
    assert code == 0, err
    rep = json.loads((tmp_path / job / "report.json").read_text())
    inputs = {i["name"]: i for i in rep["model"]["inputs"]}
    assert inputs["state"]["batch_axis"] == 1 and inputs["sr"]["batch_axis"] is None
    assert rep["quantization"]["quantized_nodes"] == 6 and rep["quantization"]["in_subgraphs"] == {}
    assert rep["calibration"]["samples"] == 4 * 16000 // 512
    assert rep["int8"]["accuracy"]["fidelity"]["sqnr_db"] > 10
