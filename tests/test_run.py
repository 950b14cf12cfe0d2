"""trtq run: sweeps, incremental re-runs, parallel builds, failure isolation, sharded calibration."""

import json

import pytest

from conftest import artifact_bytes as _bytes
from conftest import write_broken_job, write_job, write_sweep
from trtq.errors import JobError
from trtq.runs import run as runner
from trtq.job import load_job
from trtq.runs.sweep import expand, load_jobs

@pytest.fixture
def sweep(tmp_path):
    return tmp_path, write_sweep(tmp_path, "t", samples=24, seed=0, output="out")


def _run(path, *args, **kw):
    return runner.run(load_jobs([path], list(args)), **kw)


def test_sweep_expands_in_key_order_with_value_names(tmp_path):
    data = {"name": "cls", "model": "a.onnx", "sweep": {"calibrator.method": ["entropy", "mse"],
                                                        "model": ["m/a.onnx", "m/b.onnx"]}}
    out = expand(data, tmp_path / "j.yaml")
    assert [n for n, _ in out] == ["cls-entropy-a", "cls-entropy-b", "cls-mse-a", "cls-mse-b"]
    assert out[1][1]["calibrator"]["method"] == "entropy" and out[1][1]["model"] == "m/b.onnx"
    assert "sweep" not in out[0][1]
    with pytest.raises(JobError, match="sweep.calibrator.method: give a non-empty list"):
        expand({"name": "x", "sweep": {"calibrator.method": "entropy"}}, tmp_path / "j.yaml")
    with pytest.raises(JobError, match="both named 'x-a'"):
        expand({"name": "x", "sweep": {"model": ["1/a.onnx", "2/a.onnx"]}}, tmp_path / "j.yaml")


def test_build_refuses_a_sweep_and_points_at_run(sweep):
    _, path = sweep
    with pytest.raises(JobError, match="expands into several jobs; run it with 'trtq run"):
        load_job(path)


def test_sweep_runs_then_rerun_skips_everything(sweep):
    folder, path = sweep
    items = _run(path)
    assert [(i.job.name, i.status) for i in items] == [("t-entropy", "built"), ("t-percentile", "built"),
                                                       ("t-mse", "built")]
    out = folder / "out"
    before = {i.job.name: _bytes(out / i.job.name) for i in items}
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ranges = {n: json.loads(b["ranges.json"])["calibrator"]["method"] for n, b in before.items()}
    assert ranges == {"t-entropy": "entropy", "t-percentile": "percentile", "t-mse": "mse"}
    assert before["t-entropy"]["calibration.cache"] != before["t-mse"]["calibration.cache"]

    again = _run(path)
    assert [i.status for i in again] == ["up to date"] * 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes, "nothing was rewritten"

    doc = runner.summary(again)
    runner.write_summary(doc, out)
    md = (out / "summary.md").read_text()
    assert "| t-entropy | up to date | tiny.onnx | entropy | onnxruntime |" in md
    saved = json.loads((out / "summary.json").read_text())
    assert saved["counts"]["up to date"] == 3
    row = saved["jobs"][0]
    rep = json.loads((out / "t-entropy" / "report.json").read_text())
    assert row["int8_top1"] == rep["int8"]["accuracy"]["top1"] and row["agreement"] == rep["int8"]["accuracy"]["top1_agreement"]
    assert row["sqnr_db"] == rep["int8"]["accuracy"]["fidelity"]["sqnr_db"] and row["latency_ratio"] > 0


def test_only_the_stage_whose_inputs_changed_runs(sweep):
    folder, path = sweep
    _run(path)
    out = folder / "out"
    engine_mtime = (out / "t-mse" / "engine.ort.onnx").stat().st_mtime_ns
    items = _run(path, "evaluation.top_k=2")  # evaluation only: builds stay, evaluations rerun
    assert [i.status for i in items] == ["evaluated"] * 3
    assert (out / "t-mse" / "engine.ort.onnx").stat().st_mtime_ns == engine_mtime
    assert json.loads((out / "t-mse" / "report.json").read_text())["job"]["evaluation"]["top_k"] == 2
    items = _run(path, "evaluation.top_k=2", "calibrator.percentile=99.9")  # only t-percentile depends on it
    assert [i.status for i in items] == ["up to date", "built", "up to date"]
    assert [i.status for i in _run(path, "evaluation.top_k=2", "calibrator.percentile=99.9", force=True)] == ["built"] * 3


def test_parallel_builds_give_the_same_artifacts_and_failures_are_isolated(sweep):
    folder, path = sweep
    serial = _run(path, out_root=folder / "serial", executor=runner.LocalExecutor(1))
    bad = write_broken_job(folder)
    items = runner.run(load_jobs([path, bad]), out_root=folder / "par", executor=runner.LocalExecutor(2))
    status = {i.job.name: i.status for i in items}
    assert status == {"t-entropy": "built", "t-percentile": "built", "t-mse": "built", "bad": "failed"}
    failed = next(i for i in items if i.status == "failed")
    assert "broken.onnx: not an ONNX model" in failed.error and not (folder / "par" / "bad").exists()
    for it in serial:
        assert _bytes(folder / "serial" / it.job.name) == _bytes(folder / "par" / it.job.name), it.job.name
    md = runner.summary_markdown(runner.summary(items))
    assert "## Failures" in md and "`bad`" in md


def test_sharded_calibration_equals_a_single_pass(sweep):
    from trtq.pipeline.build import build

    folder, _ = sweep
    base = {"model": str(folder / "tiny.onnx"), "calibrator": {"method": "entropy"}}
    one = build(load_job(write_job(folder / "a.yaml", {**base, "name": "one", "calibration": {
        "path": str(folder / "data.npz"), "batch_size": 5}})), folder / "o", reuse=False)
    four = build(load_job(write_job(folder / "b.yaml", {**base, "name": "four", "calibration": {
        "path": str(folder / "data.npz"), "batch_size": 3, "shards": 4}})), folder / "o", reuse=False)
    assert four.report["calibration"]["shards"] == 4
    assert _bytes(one.out_dir) == _bytes(four.out_dir)


def test_cli_exit_status_counts_failures_and_summary_is_written(sweep, run_cli):
    folder, path = sweep
    bad = write_broken_job(folder)
    code, out, err = run_cli("run", path, bad, "--out", folder / "cli", "--workers", "1")
    assert code == 1
    assert "trtq: bad failed:" in err and "not an ONNX model" in err
    assert "t-entropy" in out and "built" in out
    doc = json.loads((folder / "cli" / "summary.json").read_text())
    assert doc["counts"] == {"built": 3, "evaluated": 0, "up to date": 0, "failed": 1}
    code, _, err = run_cli("run", folder / "missing.yaml")
    assert code == 2 and "missing.yaml: no such job file or folder" in err


def test_ctrl_c_stops_the_run_instead_of_counting_as_a_failed_job(sweep, monkeypatch):
    import trtq.pipeline.build as build_mod

    folder, path = sweep
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(path, out_root=folder / "ctrl-c", executor=runner.LocalExecutor(1))
    assert calls == [1], "no further job started after Ctrl-C"
