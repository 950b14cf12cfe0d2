"""quantization.weights: per_channel | per_tensor on both targets; the calibration cache is the same."""

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import job_with
from trtq.api import build, load_job


def _weight_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
            and inits[n.input[0]].dtype == np.int8}


def test_per_tensor_weights_on_both_targets_leave_the_cache_alone(tiny):
    folders = {}
    for target in ("onnxruntime", "tensorrt"):
        for weights in ("per_channel", "per_tensor"):
            path = job_with(tiny, name=f"{target}-{weights}", quantization__target=target,
                            quantization__weights=weights)
            result = build(load_job(path), tiny["dir"] / "out")
            folders[target, weights] = result.out_dir
            assert result.report["quantization"]["weights"] == weights
    for target in ("onnxruntime", "tensorrt"):
        per_channel = _weight_scales(onnx.load(str(folders[target, "per_channel"] / "model.int8.onnx")))
        per_tensor = _weight_scales(onnx.load(str(folders[target, "per_tensor"] / "model.int8.onnx")))
        assert all(s.shape == () for s in per_tensor.values()) and len(per_tensor) == 5
        assert all(s.ndim == 1 for s in per_channel.values())
        # one scale per tensor: the largest of the per-channel ones (max |w| over all channels / 127)
        for name, s in per_tensor.items():
            assert s == per_channel[name].max(), name
        cache = {k: (folders[target, k] / "calibration.cache").read_bytes() for k in ("per_channel", "per_tensor")}
        assert cache["per_channel"] == cache["per_tensor"]
    for weights, ndim in (("per_channel", 1), ("per_tensor", 0)):  # the ONNX Runtime engine's own QLinearConv
        ort = onnx.load(str(folders["onnxruntime", weights] / "engine.ort.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in ort.graph.initializer}
        convs = [n for n in ort.graph.node if n.op_type == "QLinearConv"]
        assert convs and all(inits[n.input[4]].ndim == ndim for n in convs), weights
