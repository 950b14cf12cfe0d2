"""TensorRT's implicit INT8 fed trtq's cache (``mode: implicit``, ``calibrator.source: trtq``)
asks the cache for every tensor of its network: the cache must hold every FP32 tensor of the
graph, not only those the Q/DQ model quantizes (TensorRT 10 otherwise logs "Missing scale and
zero-point" and runs those layers outside INT8). The Q/DQ placement does not change."""

import onnx
import pytest
from conftest import need_shared, write_job

from trtq.calib import cache as trt_cache
from trtq.calib.calibrate import calibrate
from trtq.job import load_job
from trtq.pipeline.build import prepare_job
from trtq.quant.qdq import insert_qdq

TINY_TENSORS = {"input", "conv_out", "relu_out", "convt_out", "gap", "flat", "fc1_out", "fc2_out", "output"}


def _cache_and_qdq(job_path, overrides=()):
    job = load_job(job_path, list(overrides))
    prepared = prepare_job(job)
    cal = calibrate(prepared, job.calibration, job.calibrator)
    text = trt_cache.cache_text(cal.ranges, "100300", "EntropyCalibration2")
    return trt_cache.loads(text).scales, insert_qdq(prepared.model, prepared.plan, cal.ranges, "tensorrt"), prepared


def _every_output(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}


def test_implicit_trtq_cache_covers_every_tensor_and_keeps_the_qdq_placement(tiny):
    job = {**tiny["job"], "quantization": {"target": "tensorrt"}}
    job.pop("evaluation")
    explicit = write_job(tiny["dir"] / "explicit.yaml", job)
    implicit = write_job(tiny["dir"] / "implicit.yaml", {**job, "tensorrt": {"mode": "implicit"}})
    own = write_job(tiny["dir"] / "own.yaml", {**job, "tensorrt": {"mode": "implicit"},
                                               "calibrator": {"method": "minmax", "source": "tensorrt"}})
    scales_e, qdq_e, _ = _cache_and_qdq(explicit)
    scales_i, qdq_i, _ = _cache_and_qdq(implicit)
    assert set(scales_e) == {"input", "relu_out", "flat", "fc1_out", "fc2_out", "convt_out"}
    assert set(scales_i) == TINY_TENSORS  # graph output included
    assert {k: scales_i[k] for k in scales_e} == scales_e  # the same ranges where both have one
    assert qdq_i.SerializeToString() == qdq_e.SerializeToString()
    assert set(_cache_and_qdq(own)[0]) == set(scales_e)  # TensorRT calibrates itself: nothing extra


@pytest.mark.parametrize("model, count", [("efficientnet_lite0.onnx", 95), ("mnist-8.onnx", 9)])
def test_implicit_trtq_cache_covers_every_tensor_of_real_models(tmp_path, model, count):
    # 95 and 9: the tensors TensorRT 10 asks an implicit-INT8 cache for on these two models
    # (trtq's cache had 60 and 3 of them)
    import numpy as np

    path = need_shared("models", model)
    shape = (4, 3, 224, 224) if "efficientnet" in model else (1, 1, 28, 28)
    name = onnx.load(str(path)).graph.input[0].name
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(0, 1, shape).astype(np.float32))
    job = {"name": "m", "model": str(path), "calibration": {"path": "x.npy", "batch_size": shape[0], "input": name},
           "quantization": {"target": "tensorrt"}, "tensorrt": {"mode": "implicit"}}
    scales, _, prepared = _cache_and_qdq(write_job(tmp_path / "job.yaml", job))
    assert len(scales) == count
    assert set(scales) == _every_output(prepared.model)
