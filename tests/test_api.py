"""The Python API (trtq.load_job / build / evaluate), the artifacts helpers, and what the report
says about the path calibration took."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from conftest import artifact_bytes, tiny_model

import trtq
from trtq.artifacts import write_atomic, write_atomic_group
from trtq.errors import JobError, ModelError, OutputError
from trtq.model.prepare import prepare
from trtq.runtime import ort_native


def test_public_api_is_listed_and_import_stays_light():
    assert set(trtq.__all__) == {"BuildResult", "Job", "TrtqError", "build", "evaluate", "load_job", "__version__"}
    assert all(hasattr(trtq, name) for name in trtq.__all__)
    code = ("import sys, trtq; heavy = [m for m in ('onnxruntime', 'onnx', 'numpy', 'trtq.pipeline.build') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # no module of the package shadows an API name once imported (trtq.evaluate must stay the function)
    import pkgutil
    assert not {m.name for m in pkgutil.iter_modules(trtq.__path__)} & set(trtq.__all__)


def test_api_build_equals_the_cli_build_and_returns_the_report(tiny, run_cli, tmp_path):
    assert run_cli("build", tiny["job_path"], "-q", "--out", tmp_path / "cli")[0] == 0
    job = trtq.load_job(tiny["job_path"], ["calibrator.method=minmax"])
    result = trtq.build(job, out=tmp_path / "api")
    assert isinstance(result, trtq.BuildResult) and result.out_dir == tmp_path / "api" / "tiny"
    assert artifact_bytes(result.out_dir) == artifact_bytes(tmp_path / "cli" / "tiny")
    on_disk = json.loads((result.out_dir / "report.json").read_text())
    assert on_disk["calibration"]["data_fingerprint"] == result.report["calibration"]["data_fingerprint"]
    assert on_disk["artifacts"] == result.report["artifacts"]


def test_api_errors_are_exceptions_not_exits(tiny, tmp_path):
    with pytest.raises(JobError, match=r"calibratr: unknown key; did you mean 'calibrator'"):
        trtq.load_job(tiny["job_path"], ["calibratr.method=entropy"])
    job = trtq.load_job(tiny["job_path"], [f"model={tmp_path / 'missing.onnx'}"])
    with pytest.raises(ModelError, match="missing.onnx: model file not found"):
        trtq.build(job, out=tmp_path / "out")
    assert not (tmp_path / "out" / "tiny").exists()
    assert issubclass(JobError, trtq.TrtqError)


def test_api_evaluate_reevaluates_without_calibrating(tiny, tmp_path, monkeypatch):
    import trtq.calib.calibrate as calibrate_mod

    job = trtq.load_job(tiny["job_path"])
    built = trtq.build(job, out=tmp_path)
    before = artifact_bytes(built.out_dir)
    monkeypatch.setattr(calibrate_mod, "collect_statistics", lambda *a, **k: pytest.fail("evaluate calibrated"))
    again = trtq.evaluate(trtq.load_job(tiny["job_path"], ["evaluation.latency.iterations=4"]), out=tmp_path)
    assert again.report["int8"]["latency"]["by_batch"]["1"]["iterations"] == 4
    assert artifact_bytes(again.out_dir) == before
    assert again.report["int8"]["accuracy"] == built.report["int8"]["accuracy"]


def test_report_says_how_calibration_read_the_activations(tiny, tmp_path):
    result = trtq.build(trtq.load_job(tiny["job_path"]), out=tmp_path)
    layout = result.report["calibration"]["activation_layout"]
    plan = prepare(tiny["model"], for_onnxruntime=True).plan  # an onnxruntime-target job calibrates its placement too
    assert layout["nchwc_tensors"] + layout["nchw_tensors"] == len(plan.calibrated)
    # tiny's channel counts (3, 4, 2) fit no NCHWc block: every tensor is read in NCHW order, and the report says why
    assert layout["nchwc_tensors"] == 0 and layout["fallback"]
    md = (result.out_dir / "report.md").read_text()
    assert f"calibration read every tensor in NCHW order: {layout['fallback']}" in md


def test_exposure_names_its_fallback():
    model = tiny_model()
    exposure = ort_native.expose(model, ["input", "relu_out"], {"input": 1, "relu_out": 1})
    assert exposure.blocks == {} and exposure.fallback
    assert ort_native.expose(model, ["relu_out"], {}, native=False).fallback is None  # asked for NCHW: no excuse needed


def test_write_atomic_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "report.json"
    write_atomic(target, "old\n")

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r": no space left on device writing report.json, \d+ KiB free; free some space there or try elsewhere"):
        write_atomic(target, fails, hint="try elsewhere")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_write_atomic_group_replaces_every_file_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_atomic_group([(a, "1"), (b, b"2")])
    assert (a.read_text(), b.read_text()) == ("1", "2")
    with pytest.raises(OutputError):
        write_atomic_group([(a, "new"), (tmp_path / "no-such-dir" / "c.txt", "x")])
    assert a.read_text() == "1", "a file of a failed group was replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    write_atomic(tmp_path / "m.onnx", lambda p: onnx.save(tiny_model(), str(p)))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
