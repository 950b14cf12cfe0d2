"""Model size in the report: bytes by role, counted by hand on the tiny model."""

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from conftest import job_with
from trtq.api import build, load_job
from trtq.report.size import initializer_bytes

# tiny_model: weights conv 4·3·3·3 + convt 4·2·2·2 + fc1 5·2 + fc2 5·6 + mm 6·3 = 198 values;
# biases 4 + 2 + 5 + 6 = 17; per-channel scales on conv (4, axis 0), convt (2, axis 1), fc1 (5,
# transB: axis 0), fc2 (6, axis 1), mm (3, axis 1) = 20 channels; 6 activation tensors quantized.
WEIGHTS, BIASES, CHANNELS, ACTIVATIONS = 198, 17, 20, 6


def test_size_fields_of_the_tiny_model(tiny):
    result = build(load_job(job_with(tiny, quantization__target="tensorrt")), tiny["dir"] / "out")
    folder, size = result.out_dir, result.report["size"]
    fp32, int8 = size["initializers"]["fp32"], size["initializers"]["int8"]
    assert fp32 == {"int8_weights": 0, "weight_scales": 0, "float_weights": 4 * WEIGHTS, "int32_biases": 0,
                    "float_biases": 4 * BIASES, "activation_scales": 0, "other": 0}
    # int8 values 1 B each; a weight channel's float32 scale + int8 zero point 5 B; an activation's 5 B;
    # TensorRT's biases stay FP32 (bias-corrected copies)
    assert int8 == {"int8_weights": WEIGHTS, "weight_scales": 5 * CHANNELS, "float_weights": 0, "int32_biases": 0,
                    "float_biases": 4 * BIASES, "activation_scales": 5 * ACTIVATIONS, "other": 0}
    assert size["weights"] == {"fp32_bytes": 792, "int8_bytes": 298, "ratio": 792 / 298}
    assert size["fp32_model_bytes"] == tiny["model"].stat().st_size
    assert size["int8_model_bytes"] == (folder / "model.int8.onnx").stat().st_size
    assert size["engine_bytes"] is None  # no TensorRT here: no plan
    # per-channel scales are most of a tiny model's weight bytes: said so
    assert size["notes"][0] == "weights 2.66× smaller, not 4×: of 298 B, 100 B are per-channel scales and zero points"
    md = (folder / "report.md").read_text()
    assert "| weights | 792 B | 298 B | 2.66× smaller |" in md and "Size: weights 2.66× smaller" in md
    assert json.loads((folder / "report.json").read_text())["size"] == size


def test_size_counts_layers_kept_out_of_int8_and_the_engine(tiny):
    job = job_with(tiny, quantization__exclude_nodes=["fc2"], quantization__target="tensorrt")
    size = build(load_job(job), tiny["dir"] / "out").report["size"]
    int8 = size["initializers"]["int8"]
    assert int8["float_weights"] == 2 * 30 and int8["int8_weights"] == WEIGHTS - 30  # fc2 kept, in FP16
    assert int8["float_biases"] == 4 * (BIASES - 6) + 2 * 6
    assert "60 B stay float (layers kept out of INT8)" in size["notes"][0]
    ort = build(load_job(job_with(tiny, name="ort")), tiny["dir"] / "out").report["size"]
    assert ort["engine_bytes"] == (tiny["dir"] / "out" / "ort" / "engine.ort.onnx").stat().st_size


def test_roles_follow_the_graph_not_the_names():
    inits = [numpy_helper.from_array(np.zeros((2, 3), np.float32), "a"),   # Q input: an FP32 weight behind Q→DQ
             numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.zeros(4, np.int64), "shape")]
    nodes = [helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"]),
             helper.make_node("MatMul", ["x", "ad"], ["y0"]), helper.make_node("Reshape", ["y0", "shape"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    got = initializer_bytes(helper.make_model(g))
    assert got["float_weights"] == 24 and got["weight_scales"] == 5 and got["other"] == 32
