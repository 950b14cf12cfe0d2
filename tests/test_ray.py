"""trtq run through a real local Ray instance (no mock): the same artifacts as a local run,
calibration shards as Ray tasks equal to one pass, failures isolated."""

import json

import pytest

from conftest import artifact_bytes as _bytes
from conftest import write_broken_job, write_job, write_sweep
from trtq.runs import run as runner
from trtq.pipeline.build import build
from trtq.job import load_job
from trtq.runs.sweep import load_jobs

ray = pytest.importorskip("ray", reason="Ray is a dev dependency (pip install -e .[dev])")
from trtq.runs import ray_cluster  # noqa: E402

@pytest.fixture(scope="module")
def local_ray():
    ray_cluster.connect("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def jobs(tmp_path):
    return tmp_path, write_sweep(tmp_path, "r", samples=20, seed=3)


def test_sweep_on_ray_matches_the_local_run_byte_for_byte(local_ray, jobs):
    folder, path = jobs
    bad = write_broken_job(folder)
    local = runner.run(load_jobs([path]), out_root=folder / "local", executor=runner.LocalExecutor(1))
    on_ray = runner.run(load_jobs([path, bad]), out_root=folder / "ray", executor=ray_cluster.RayExecutor("local"))
    assert {i.job.name: i.status for i in on_ray} == {"r-entropy": "built", "r-percentile": "built",
                                                      "r-mse": "built", "bad": "failed"}
    assert "not an ONNX model" in next(i for i in on_ray if i.job.name == "bad").error
    for it in local:
        assert _bytes(folder / "local" / it.job.name) == _bytes(folder / "ray" / it.job.name), it.job.name
        rep = json.loads((folder / "ray" / it.job.name / "report.json").read_text())
        assert rep["int8"]["accuracy"]["samples"] == 20
    again = runner.run(load_jobs([path]), out_root=folder / "ray", executor=ray_cluster.RayExecutor("local"))
    assert [i.status for i in again] == ["up to date"] * 3
    shared = runner.run(load_jobs([path]), out_root=folder / "shared",
                        executor=ray_cluster.RayExecutor("local", shared=True))
    assert [i.status for i in shared] == ["built"] * 3
    for it in local:
        assert _bytes(folder / "local" / it.job.name) == _bytes(folder / "shared" / it.job.name), it.job.name
        assert (folder / "shared" / it.job.name / "report.md").is_file()


def test_calibration_split_over_four_ray_tasks_equals_one_process(local_ray, jobs):
    folder, _ = jobs
    calls = []

    def counting_map(fn, args):
        calls.append(len(args))
        return ray_cluster.shard_map(fn, args)

    base = {"model": str(folder / "tiny.onnx"), "calibrator": {"method": "entropy"}}
    single = build(load_job(write_job(folder / "one.yaml", {**base, "name": "one", "calibration": {
        "path": str(folder / "data.npz"), "batch_size": 4}})), folder / "o", reuse=False)
    sharded = build(load_job(write_job(folder / "four.yaml", {**base, "name": "four", "calibration": {
        "path": str(folder / "data.npz"), "batch_size": 4, "shards": 4}})), folder / "o", reuse=False,
        shard_map=counting_map)
    assert calls == [4, 4]  # the statistics, then entropy's exact histograms over the merged max
    r1 = json.loads((single.out_dir / "ranges.json").read_text())
    r4 = json.loads((sharded.out_dir / "ranges.json").read_text())
    assert r1["tensors"] == r4["tensors"] and r1["data_fingerprint"] == r4["data_fingerprint"]
    assert _bytes(single.out_dir) == _bytes(sharded.out_dir)
