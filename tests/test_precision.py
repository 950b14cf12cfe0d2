"""Layers kept out of INT8 in FP16 (``keep_precision: fp16``): the cast graph is valid wherever
the excluded node sits, and runs in ONNX Runtime close to the FP32-kept Q/DQ graph."""

import numpy as np
import onnx
from conftest import ROOT, need_shared, tiny_model
from test_qdq import _calibrated

from trtq.calib.calibrate import calibrate
from trtq.data.sources import batches, open_source
from trtq.evaluation.metrics import sqnr_db
from trtq.job import load_job
from trtq.model.plan import name_nodes, plan_quantization
from trtq.pipeline.build import prepare_job
from trtq.quant.precision import cast_nodes_fp16
from trtq.quant.qdq import insert_qdq
from trtq.runtime.onnxruntime import session

X = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)


def _tiny_pair(excluded):
    """The tiny model's TensorRT Q/DQ graph with ``excluded`` kept out of INT8: FP32-kept, FP16-cast."""
    model = tiny_model()
    name_nodes(model)
    _, ranges = _calibrated(model, X)
    fp32, half = _both(model, plan_quantization(model, exclude_nodes=excluded), ranges, excluded)
    onnx.checker.check_model(half, full_check=True)
    return fp32, half


def _both(model, plan, ranges, excluded):
    fp32 = insert_qdq(model, plan, ranges, "tensorrt")
    return fp32, cast_nodes_fp16(fp32, excluded)


def _run(model, feeds):
    return session(model).run(None, feeds)[0]


def test_interior_excluded_nodes_get_input_casts_and_run_in_onnxruntime():
    # convt is fed by relu_out and fc1 by flat: intermediate tensors the Q/DQ graph has no
    # value_info for; each needs Cast(FLOAT16) in front, or ORT refuses the mixed-type node
    fp32, half = _tiny_pair(["convt", "fc1"])
    to_half = onnx.TensorProto.FLOAT16
    casts = {n.input[0] for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == to_half}
    assert casts == {"relu_out", "flat"}
    got, ref = _run(half, {"input": X}), _run(fp32, {"input": X})
    assert got.dtype == np.float32 and not np.array_equal(got, ref)
    assert sqnr_db(ref, got) > 40.0  # FP16 rounding of two layers, far below the INT8 noise


def test_chained_excluded_nodes_pass_fp16_along_without_a_round_trip():
    # fc1 feeds fc2: fc2 reads fc1's FP16 output directly (a second Cast to the same name was a
    # duplicate definition ONNX Runtime refused)
    fp32, half = _tiny_pair(["fc1", "fc2"])
    fc2 = next(n for n in half.graph.node if n.name == "fc2")
    assert fc2.input[0] == "fc1_out__fp16"
    assert sqnr_db(_run(fp32, {"input": X}), _run(half, {"input": X})) > 40.0


def test_efficientnet_interior_layers_in_fp16_lose_under_half_a_db_against_fp32_kept():
    model_path = need_shared("models", "efficientnet_lite0.onnx")
    photos = need_shared("data", "imagenet-sample-500")
    job = load_job(ROOT / "configs" / "efficientnet_lite0.yaml",
                   [f"model={model_path}", f"calibration.path={photos}", "calibration.max_samples=8",
                    "quantization.target=tensorrt", "quantization.exclude_nodes=[b1_project, head]"])
    prepared = prepare_job(job)
    cal = calibrate(prepared, job.calibration, job.calibrator)
    fp32, half = _both(prepared.model, prepared.plan, cal.ranges, ["b1_project", "head"])
    feeds = next(batches(open_source(job.calibration, prepared.inputs, "calibration"), prepared.inputs, 8,
                         "calibration", 0, 8)).feeds
    ref = _run(prepared.model, feeds)
    kept32, kept16 = sqnr_db(ref, _run(fp32, feeds)), sqnr_db(ref, _run(half, feeds))
    print(f"EfficientNet-Lite0 logits vs FP32 model: excluded layers FP32 {kept32:.2f} dB, FP16 {kept16:.2f} dB")
    assert abs(kept16 - kept32) < 0.5
