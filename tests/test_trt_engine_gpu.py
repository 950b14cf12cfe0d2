"""End to end on real TensorRT and a GPU (``pytest -m gpu``): a job with ``target: tensorrt``
builds engine.plan, the runner reproduces the FP32 model's outputs within INT8 error, and the
inspector finds INT8 layers. Skipped unless ``tensorrt`` imports and a GPU is visible; nothing
here has run on trtq's own machines (no TensorRT there)."""

import json

import numpy as np
import pytest

from trtq.pipeline.build import build
from trtq.job import load_job

from conftest import write_job

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'trtq[tensorrt-cu12]' or "
                                                 "'trtq[tensorrt-cu13]' on a GPU machine)")
    from trtq.trt.cuda import cuda_runtime

    try:
        cuda_runtime().device()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no usable GPU: {exc}")
    return trt


def _build(tiny, **sections):
    job = {**tiny["job"], "quantization": {"target": "tensorrt"}, **sections}
    return build(load_job(write_job(tiny["dir"] / "job.yaml", job)))


def test_explicit_build_writes_a_plan_that_runs_and_reports_int8_layers(trt, tiny):
    from trtq.engine.tensorrt import load_runner

    result = _build(tiny)
    folder = result.out_dir
    meta = json.loads((folder / "engine.plan.json").read_text())
    assert meta["tensorrt_version"] == trt.__version__ and meta["gpu"]["compute_capability"]
    eng = result.report["engine"]
    assert eng["kind"] == "tensorrt" and eng["strongly_typed"]
    assert eng["inspection"]["detailed"] and eng["inspection"]["int8_layers"] > 0
    assert result.report["int8"]["accuracy"]["fidelity"]["sqnr_db"] > 15
    with load_runner(folder / "engine.plan") as runner:
        (out,) = runner({"input": tiny["x"][:4]})
    assert out.shape == (4, 3)


def test_implicit_build_takes_trtqs_cache_on_tensorrt_10(trt, tiny):
    if int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 has no implicit INT8")
    result = _build(tiny, tensorrt={"mode": "implicit"})
    assert result.report["engine"]["calibration"]["batches"] == 0  # TensorRT took the cache, asked no batch


def test_implicit_build_lets_tensorrt_calibrate_on_streamed_batches(trt, tiny):
    if int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 has no implicit INT8")
    result = _build(tiny, tensorrt={"mode": "implicit"}, calibrator={"method": "entropy", "source": "tensorrt"})
    cal = result.report["engine"]["calibration"]
    assert cal["batches"] == 6 and cal["dropped_samples"] == 0
    assert (result.out_dir / "calibration.tensorrt.cache").read_text().startswith("TRT-")
    assert np.isfinite(result.report["int8"]["accuracy"]["fidelity"]["sqnr_db"])
