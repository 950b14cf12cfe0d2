"""Pre-quantized models (Q/DQ already in the graph) deploy as they are: made here with ONNX
Runtime's quantize_static (QDQ, U8S8 and S8S8), built without calibration data, their scales
reproduced in the cache and their int8 weights kept."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from conftest import assert_clean_error, tiny_model, write_job
from trtq.api import build, evaluate, load_job
from trtq.calib import cache as trt_cache
from trtq.evaluation.metrics import sqnr_db
from trtq.model.prepare import prepare
from trtq.runtime.onnxruntime import Runner, session

KINDS = {"u8s8": (QuantType.QUInt8, False), "s8s8": (QuantType.QInt8, True)}


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def make_prequantized(folder, kind: str, **options):
    """tiny_model quantized by ONNX Runtime (QDQ, per-channel int8 weights), 8 samples of calibration."""
    fp32 = folder / "tiny.onnx"
    onnx.save(tiny_model(), fp32)
    x = np.random.default_rng(3).normal(size=(8, 3, 8, 8)).astype(np.float32)
    act, symmetric = KINDS[kind]
    out = folder / f"tiny_{kind}.onnx"
    quantize_static(str(fp32), str(out), _Reader(x), quant_format=QuantFormat.QDQ, activation_type=act,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": symmetric}, **options)
    return out


def _job(tiny, model, target="onnxruntime", **quantization) -> dict:
    job = {"name": f"pre-{target}", "model": str(model), "quantization": {"target": target, **quantization},
           "evaluation": dict(tiny["job"]["evaluation"]), "output": "out"}
    return job


def _activation_qparams(model: onnx.ModelProto) -> dict[str, tuple[float, int, np.dtype]]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]), inits[n.input[2]].dtype)
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.mark.parametrize("kind", ["s8s8", "u8s8"])
def test_prequantized_model_builds_without_calibration_data_its_scales_in_the_cache(tiny, kind):
    path = make_prequantized(tiny["dir"], kind)
    source = onnx.load(str(path))
    result = build(load_job(write_job(tiny["dir"] / "job.yaml", _job(tiny, path, convert_asymmetric=True))))
    pre = result.report["quantization"]["prequantized"]
    assert pre["int8_weights"] == 5 and pre["float_without_scale"] == [] and result.report["calibration"]["samples"] == 0
    cache = trt_cache.loads((result.out_dir / "calibration.cache").read_text())
    qparams = _activation_qparams(source)
    # ORT names the last MatMul's output 'output_QuantizeLinear_Input'; the FP32 graph gives it back its name
    qparams["output"] = qparams.pop("output_QuantizeLinear_Input")
    assert set(cache.scales) >= set(qparams) - {"conv_out"}
    for tensor, (scale, zp, dtype) in qparams.items():
        if kind == "s8s8":  # symmetric int8: the model's own scale, bit for bit
            assert zp == 0 and cache.scales[tensor] == np.float32(scale), tensor
        else:  # uint8 affine: the symmetric scale covering [(0 − zp)·s, (255 − zp)·s]
            assert dtype == np.uint8
            assert cache.scales[tensor] == np.float32(max(zp * scale, (255 - zp) * scale) / 127), tensor
    assert pre["asymmetric_activations"] == (len(qparams) if kind == "u8s8" else 0)
    ranges = json.loads((result.out_dir / "ranges.json").read_text())["tensors"]
    # a Relu's output cannot be negative: its range starts at 0 (the ONNX Runtime flavour's uint8 then ends
    # where the model's scale clips); the symmetric scale in the cache is the model's all the same
    assert ranges["relu_out"]["min"] == 0.0 and np.float32(ranges["relu_out"]["scale"]) == cache.scales["relu_out"]
    kernels = result.report["engine"]["kernels"]
    assert kernels["int8_weighted"] >= 3  # the Gemms and the MatMul at least (tiny_model's Conv stays FP32 in ORT)


def test_stripped_graph_is_the_fp32_model_with_the_dequantized_weights(tiny):
    """The FP32 graph trtq works on computes the original model with the int8 weights (and int32
    biases) dequantized; where ONNX Runtime's quantizer dropped the Relu in front of a uint8 pair,
    a Clip to that pair's range [0, (255 − zp)·s] stands in for it (what the quantized model computes)."""
    path = make_prequantized(tiny["dir"], "u8s8")
    source = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    expected = tiny_model()
    for init in expected.graph.initializer:
        base = init.name  # conv.w → conv.w_quantized · conv.w_scale; conv.b → conv.b_quantized · its scale
        q_name = f"{base}_quantized"
        scale = source[f"{base}_scale" if base.endswith(".w") else f"{q_name}_scale"]
        q = source[q_name].astype(np.float32)
        axis = {"convt.w": 1, "fc2.w": 1, "mm.w": 1}.get(base, 0)
        shape = [1] * q.ndim
        shape[axis] = -1
        init.CopyFrom(numpy_helper.from_array((q * scale.reshape(shape)).astype(np.float32), base))
    model = onnx.load(str(path))
    s, zp = float(source["relu_out_scale"]), int(source["relu_out_zero_point"])
    assert "Relu" not in [n.op_type for n in model.graph.node] and zp == 0
    relu = next(n for n in expected.graph.node if n.op_type == "Relu")
    relu.op_type = "Clip"
    relu.input.extend(["clip_lo", "clip_hi"])
    expected.graph.initializer.extend([numpy_helper.from_array(np.float32(0), "clip_lo"),
                                       numpy_helper.from_array(np.float32((255 - zp) * s), "clip_hi")])
    prepared = prepare(path)
    clips = [n for n in prepared.model.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1 and list(clips[0].output) == ["relu_out"]
    x = tiny["x"]
    want = Runner(session(expected))({"input": x})[0]
    got = Runner(session(prepared.model))({"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    weights = prepared.prequantized.weights
    for name, (q, scale, axis) in weights.items():  # the int8 values themselves, exactly
        base = name.removesuffix("_DequantizeLinear_Output")
        np.testing.assert_array_equal(q, source[f"{base}_quantized"])
        np.testing.assert_array_equal(scale, source[f"{base}_scale"])


def test_tensorrt_target_keeps_the_model_as_it_is(tiny):
    path = make_prequantized(tiny["dir"], "s8s8")
    source = onnx.load(str(path))
    result = build(load_job(write_job(tiny["dir"] / "job.yaml", _job(tiny, path, "tensorrt"))))
    qdq = onnx.load(str(result.out_dir / "model.int8.onnx"))
    kept = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for init in source.graph.initializer:  # every int8 weight, scale and zero point as the model has them
        if not init.name.endswith(("b_quantized", "b_quantized_scale", "b_quantized_zero_point")):  # not a bias's
            np.testing.assert_array_equal(kept[init.name], numpy_helper.to_array(init), init.name)
    # int32 bias DQs folded into the FP32 values they compute (exactly), nothing else changed
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in qdq.graph.initializer)
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) == \
        sum(n.op_type == "QuantizeLinear" for n in source.graph.node)
    x = tiny["x"]
    a = Runner(session(source, optimize=False))({"input": x})[0]
    b = Runner(session(qdq, optimize=False))({"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert result.report["quantization"]["prequantized"]["asymmetric_activations"] == 0
    size = result.report["size"]  # the model's int8 weights (198 values, 20 channels' scale + zero point)
    assert size["weights"] == {"fp32_bytes": 4 * 198, "int8_bytes": 198 + 5 * 20, "ratio": 792 / 298}
    assert size["fp32_model_bytes"] == prepare(path).model.ByteSize()  # its FP32 graph: not a file


def test_asymmetric_model_for_tensorrt_is_refused_in_one_line(tiny, run_cli):
    path = make_prequantized(tiny["dir"], "u8s8")
    job = write_job(tiny["dir"] / "job.yaml", _job(tiny, path, "tensorrt"))
    code, _, err = run_cli("build", job)
    assert_clean_error(code, err, "TensorRT cannot take this pre-quantized model", "QuantizeLinear 'input_QuantizeLinear'",
                       "uint8 activations with zero point", "convert_asymmetric: true", out_dir=tiny["dir"] / "out")


def test_converting_asymmetric_ranges_keeps_the_clip(tiny):
    """convert_asymmetric: every activation symmetric int8 (zero point 0) for TensorRT; where the
    uint8 range started at 0 (a Relu the quantizer dropped) a Clip keeps it, and the output
    stays close to the uint8 model's."""
    path = make_prequantized(tiny["dir"], "u8s8")
    result = build(load_job(write_job(tiny["dir"] / "job.yaml", _job(tiny, path, "tensorrt", convert_asymmetric=True))))
    qdq = onnx.load(str(result.out_dir / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for n in qdq.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any(), n.name
    # the Relu the quantizer dropped is back as a Clip to the uint8 range, named as in the FP32 graph
    clip = next(n for n in qdq.graph.node if n.op_type == "Clip")
    assert list(clip.input)[0] == "relu_out_before_clip" and list(clip.output) == ["relu_out"]
    assert [n.op_type for n in prepare(path).model.graph.node if "relu_out" in n.output] == ["Clip"]
    pre = result.report["quantization"]["prequantized"]
    assert pre["converted_to_symmetric"] and 1 <= pre["step_growth"][0] <= pre["step_growth"][1] <= 2.01
    x = tiny["x"]
    fp32 = Runner(session(prepare(path).model))({"input": x})[0]
    u8 = Runner(session(onnx.load(str(path)), optimize=False))({"input": x})[0]
    s8 = Runner(session(qdq, optimize=False))({"input": x})[0]
    assert sqnr_db(fp32, s8) > sqnr_db(fp32, u8) - 7  # a coarser step costs at most ~6 dB


def test_tensors_without_a_scale_are_calibrated_or_left_float(tiny):
    """ORT's quantizer told to leave the ConvTranspose and the pooling float puts no Q/DQ on the pooling
    input and output (which the ONNX Runtime flavour quantizes: QLinearGlobalAveragePool); without calibration
    data they stay float (with a note), with data they are calibrated."""
    path = make_prequantized(tiny["dir"], "s8s8", nodes_to_exclude=["convt", "gap"])
    job = _job(tiny, path)
    bare = build(load_job(write_job(tiny["dir"] / "job.yaml", job))).report["quantization"]["prequantized"]
    missing = bare["float_without_scale"]
    assert missing == ["convt_out", "gap"] and bare["calibrated_tensors"] == [] and bare["int8_weights"] == 4
    job["calibration"] = dict(tiny["job"]["calibration"])
    result = build(load_job(write_job(tiny["dir"] / "job.yaml", job)))
    pre = result.report["quantization"]["prequantized"]
    assert pre["calibrated_tensors"] == missing and pre["float_without_scale"] == []
    assert result.report["calibration"]["samples"] == 24
    ranges = trt_cache.loads((result.out_dir / "calibration.cache").read_text()).scales
    assert set(missing) <= set(ranges)


def test_reevaluating_a_prequantized_build(tiny):
    path = make_prequantized(tiny["dir"], "s8s8")
    job = load_job(write_job(tiny["dir"] / "job.yaml", _job(tiny, path)))
    first = build(job).report
    again = evaluate(job).report
    assert again["int8"]["accuracy"]["fidelity"]["sqnr_db"] == pytest.approx(
        first["int8"]["accuracy"]["fidelity"]["sqnr_db"], rel=1e-6)


def test_a_model_without_qdq_still_needs_calibration_data(tiny, run_cli):
    job = {k: v for k, v in tiny["job"].items() if k != "calibration"}
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job))
    assert_clean_error(code, err, "calibration: required key is missing", "QuantizeLinear/DequantizeLinear")


def test_tensorrt_problems_name_per_axis_activation_scales(tiny):
    from trtq.model.prequant import tensorrt_problems
    path = make_prequantized(tiny["dir"], "s8s8")
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "input_scale":
            init.CopyFrom(numpy_helper.from_array(np.full(3, numpy_helper.to_array(init), np.float32), "input_scale"))
        if init.name == "input_zero_point":
            init.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), "input_zero_point"))
    for n in model.graph.node:
        if n.input and n.input[0] in ("input", "input_QuantizeLinear_Output"):
            n.attribute.append(onnx.helper.make_attribute("axis", 1))
    onnx.save(model, tiny["dir"] / "per_axis.onnx")
    problems = tensorrt_problems(prepare(tiny["dir"] / "per_axis.onnx").prequantized, convert_asymmetric=True)
    assert problems == ["QuantizeLinear 'input_QuantizeLinear' ('input') has per-axis activation scales"]


def test_qoperator_models_are_refused_in_one_line(tiny, run_cli):
    fp32 = tiny["dir"] / "tiny.onnx"
    onnx.save(tiny_model(), fp32)
    out = tiny["dir"] / "tiny_qop.onnx"
    quantize_static(str(fp32), str(out), _Reader(tiny["x"][:4]), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", _job(tiny, out)))
    assert_clean_error(code, err, "QOperator format", "QuantFormat.QDQ", out_dir=tiny["dir"] / "out")


def _fake_quantized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The form pytorch-quantization and ModelOpt export: FP32 weights behind Q→DQ, not int8 ones behind a DQ."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    nodes = []
    for n in out.graph.node:
        src = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if src is not None and src.data_type == onnx.TensorProto.INT8:
            q, s = numpy_helper.to_array(src), numpy_helper.to_array(inits[n.input[1]])
            shape = [1] * q.ndim
            shape[next(a.i for a in n.attribute if a.name == "axis")] = -1
            src.CopyFrom(numpy_helper.from_array((q * s.reshape(shape)).astype(np.float32), src.name))
            nodes.append(onnx.helper.make_node("QuantizeLinear", list(n.input), [f"{src.name}_q"], name=f"{src.name}_Q",
                                               axis=shape.index(-1)))
            n.input[0] = f"{src.name}_q"
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def test_fp32_weights_behind_q_dq_are_kept_as_the_int8_values_they_round_to(tiny):
    path = make_prequantized(tiny["dir"], "s8s8")
    source = onnx.load(str(path))
    fake = tiny["dir"] / "fake.onnx"
    onnx.save(_fake_quantized_weights(source), fake)
    int8 = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    weights = prepare(fake).prequantized.weights
    assert len(weights) == 5
    for name, (q, scale, _) in weights.items():
        base = name.removesuffix("_DequantizeLinear_Output")
        np.testing.assert_array_equal(q, int8[f"{base}_quantized"])
        np.testing.assert_array_equal(scale, int8[f"{base}_scale"])
    a = build(load_job(write_job(tiny["dir"] / "job.yaml", _job(tiny, path))))
    b = build(load_job(write_job(tiny["dir"] / "job.yaml", {**_job(tiny, fake), "name": "fake"})))
    assert (a.out_dir / "calibration.cache").read_bytes() == (b.out_dir / "calibration.cache").read_bytes()


def test_inspect_says_a_model_is_prequantized(tiny, run_cli):
    path = make_prequantized(tiny["dir"], "u8s8")
    code, out, _ = run_cli("inspect", path, "--json")
    assert code == 0 and json.loads(out)["prequantized"] == {"activations": 8, "int8_weights": 5, "asymmetric": 8}
    code, out, _ = run_cli("inspect", tiny["dir"] / "tiny.onnx", "--json")
    assert json.loads(out)["prequantized"] is None


@pytest.mark.parametrize("option", ["adaround", "cross_layer_equalization"])
def test_weight_refinements_on_a_prequantized_model_are_refused(tiny, run_cli, option):
    path = make_prequantized(tiny["dir"], "s8s8")
    job = write_job(tiny["dir"] / "job.yaml", _job(tiny, path, **{option: True}))
    code, _, err = run_cli("build", job)
    assert_clean_error(code, err, "weights are already quantized", option, out_dir=tiny["dir"] / "out")


def test_adaround_with_per_tensor_weights_is_refused(tiny, run_cli):
    job = {**tiny["job"], "quantization": {"adaround": True, "weights": "per_tensor"}}
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job))
    assert_clean_error(code, err, "adaround", "per_channel")
