"""Inputs as real exports have them: negative and symbolic dimensions, batch axes other than 0,
scalar inputs, constants given in the job, fixed batch sizes, images of several sizes, labels
for another model, errors raised while ONNX Runtime runs the user's data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import write_job
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import DataError, JobError
from trtq.model.inputs import infer_batch_axes
from trtq.model.prepare import prepare

RNG = np.random.default_rng(7)


def _save(tmp_path, nodes, inputs, outputs, inits, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / name)
    return tmp_path / name


def conv_model(tmp_path, shape, name="m.onnx"):
    """x[shape] → Conv(3→4, 3x3, pad 1) → Relu → GlobalAveragePool → Flatten → Gemm → y[N, 5]."""
    inits = [numpy_helper.from_array(RNG.normal(0, .5, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.normal(0, .5, (5, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    return _save(tmp_path, nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits, name)


def state_model(tmp_path, state_shape=(2, "batch", 4), input_shape=("batch", 6), sr=True):
    """input[B, 6] → MatMul, + (state[2, B, 4] summed over its first axis → MatMul) (× sr/16000) → y[B, 4];
    stateN = state·0.5."""
    inits = [numpy_helper.from_array(RNG.normal(0, .5, (6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "k16"),
             numpy_helper.from_array(RNG.normal(0, .5, (4, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"], name="mm"),
             helper.make_node("ReduceSum", ["state", "axes0"], ["s"], name="sum", keepdims=0),
             helper.make_node("MatMul", ["s", "w2"], ["s2"], name="mm2"),
             helper.make_node("Add", ["h", "s2"], ["y0"], name="add"),
             helper.make_node("Mul", ["state", "half"], ["stateN"], name="decay")]
    ins = [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape)),
           helper.make_tensor_value_info("state", TensorProto.FLOAT, list(state_shape))]
    if sr:
        nodes += [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="cast"),
                  helper.make_node("Div", ["srf", "k16"], ["g"], name="div"),
                  helper.make_node("Mul", ["y0", "g"], ["y"], name="gain")]
        ins.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"], name="out"))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "b", 4])]
    return _save(tmp_path, nodes, ins, outs, inits, "state.onnx")


def _job(tmp_path, model, data, **extra):
    job = {"name": "j", "model": str(model), "calibration": {"path": str(data), "batch_size": 3},
           "calibrator": {"method": "minmax"}, "output": str(tmp_path / "out"), **extra}
    return write_job(tmp_path / "job.yaml", job)


def _eval(data, batch_size=3, **extra):
    return {"path": str(data), "batch_size": batch_size, "per_layer_samples": 4,
            "latency": {"batch_sizes": [1, 2], "warmup": 1, "iterations": 2}, **extra}


# -- dimensions and batch axes ----------------------------------------------------------------------
def test_negative_and_symbolic_dimensions_are_dynamic(tmp_path, run_cli):
    path = conv_model(tmp_path, [-1, 3, "h", "w"])  # the PP-OCR classifier's [-1, 3, ?, ?]
    (x,) = prepare(path).inputs
    assert x.shape == (None, 3, None, None) and x.batch_axis == 0 and x.fixed_batch is None
    (x,) = prepare(path, input_shapes={"x": (1, 3, 8, 8)}).inputs  # -1 is not "fixed to -1"
    assert x.shape == (None, 3, 8, 8)
    np.save(tmp_path / "x.npy", RNG.normal(0, 1, (7, 3, 8, 8)).astype(np.float32))
    code, _, err = run_cli("build", _job(tmp_path, path, tmp_path / "x.npy"), "-q")
    assert code == 0, err


def _vi(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


@pytest.mark.parametrize("inputs, given, want", [
    ({"input": ["batch", 576], "state": [2, "batch", 128]}, {}, {"input": 0, "state": 1}),  # a shared symbol
    ({"input": [None, None], "state": [2, None, 128]}, {}, {"input": 0, "state": 1}),  # the one dynamic axis
    ({"x": [1, 3, 224, 224]}, {}, {"x": 0}),  # a fixed batch
    ({"x": [None, 3, None, None]}, {}, {"x": 0}),
    ({"x": [4, None, 8]}, {}, {"x": 0}),  # no other batched input: nothing says axis 1
    ({"x": [4, None, 8]}, {"x": 1}, {"x": 1}),
    ({"x": [None, 8], "sr": []}, {}, {"x": 0, "sr": None}),  # a scalar has no batch axis
    ({"x": [None, 8], "k": [3]}, {"k": None}, {"x": 0, "k": None}),
])
def test_batch_axes(inputs, given, want):
    assert infer_batch_axes([_vi(n, d) for n, d in inputs.items()], given) == want


def test_batch_axis_errors_name_the_job_key():
    with pytest.raises(JobError, match=r"inputs.stat: the model has no input 'stat'; its inputs: x"):
        infer_batch_axes([_vi("x", [None, 3])], {"stat": 1})
    with pytest.raises(JobError, match=r"inputs.x.batch_axis: 2 is outside the input's 2 axes"):
        infer_batch_axes([_vi("x", [None, 3])], {"x": 2})


def _state_data(tmp_path, n=7, sr=None):
    arrays = {"input": RNG.normal(0, 1, (n, 6)).astype(np.float32),
              "state": RNG.normal(0, 1, (n, 2, 4)).astype(np.float32)}  # one sample's state is [2, 4]
    if sr is not None:
        arrays["sr"] = np.asarray(sr, np.int64)
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


def test_state_batched_on_axis_1_gives_the_same_statistics_at_any_batch_size(tmp_path, run_cli):
    model = state_model(tmp_path, sr=False)
    data = _state_data(tmp_path)
    out = {}
    for bs in (1, 3):
        job = _job(tmp_path, model, data, evaluation=_eval(data, bs))
        code, _, err = run_cli("build", job, "-q", "--set", f"calibration.batch_size={bs}", "--force")
        assert code == 0, err
        out[bs] = json.loads((tmp_path / "out" / "j" / "ranges.json").read_text())["tensors"]
    assert out[1] == out[3]
    # mm2's input sums the state over its first axis: stacked on axis 1, each sample's [2, 4] intact,
    # its range is that of state[:, 0] + state[:, 1] per sample
    state = np.load(data)["state"]
    assert out[1]["s"]["amax"] == pytest.approx(float(np.abs(state.sum(axis=1)).max()), rel=1e-6)


def test_scalar_input_from_the_data_or_the_job(tmp_path, run_cli):
    model = state_model(tmp_path)
    data = _state_data(tmp_path, sr=[16000] * 7)
    job = _job(tmp_path, model, data, evaluation=_eval(data))
    code, _, err = run_cli("build", job, "-q")
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "j" / "report.json").read_text())
    assert [i["name"] for i in rep["model"]["inputs"]] == ["input", "state", "sr"]
    # the same model with sr given in the job: the data need not hold it
    data2 = _state_data(tmp_path)
    job2 = _job(tmp_path, model, data2, inputs={"sr": {"value": 16000}}, evaluation=_eval(data2))
    code, _, err = run_cli("build", job2, "-q", "--force")
    assert code == 0, err
    with pytest.raises(JobError, match=r"inputs.sr.value: shape \[2\] does not fit one sample of 'sr' \(a scalar\)"):
        from trtq.job import load_job
        from trtq.model.prepare import prepare_job

        prepare_job(load_job(job2, ["inputs.sr.value=[1, 2]"]))


def test_a_scalar_input_that_differs_within_a_batch_is_a_one_line_error(tmp_path, run_cli):
    model = state_model(tmp_path)
    data = _state_data(tmp_path, sr=[16000, 16000, 8000, 16000, 16000, 16000, 16000])
    code, out, err = run_cli("build", _job(tmp_path, model, data), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("input 'sr' has no batch axis, but samples d.npz[0] and d.npz[2] of one batch give it different "
            "values") in err
    assert not (tmp_path / "out" / "j").exists()


def test_an_onnxruntime_failure_on_the_users_data_is_one_line(tmp_path, run_cli):
    # a Reshape that only fits 6 values per sample: the data's 5 make ONNX Runtime fail while running
    inits = [numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape"),
             numpy_helper.from_array(RNG.normal(0, 1, (3, 2)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
    path = _save(tmp_path, nodes, [_vi("x", [None, None])], [_vi("y", [None, 2, 2])], inits)
    np.save(tmp_path / "x.npy", RNG.normal(0, 1, (4, 5)).astype(np.float32))
    code, _, err = run_cli("build", _job(tmp_path, path, tmp_path / "x.npy"), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "calibration: samples x.npy[0] … x.npy[2]: onnxruntime failed running the model on 'x' 3x5 float32" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "j").exists()


# -- fixed batches and several image sizes ------------------------------------------------------------
def test_fixed_batch_leaves_out_the_short_remainder_and_says_so(tmp_path, run_cli):
    path = conv_model(tmp_path, [2, 3, 8, 8])
    np.save(tmp_path / "x.npy", RNG.normal(0, 1, (5, 3, 8, 8)).astype(np.float32))
    job = _job(tmp_path, path, tmp_path / "x.npy", evaluation=_eval(tmp_path / "x.npy", 2, latency={
        "batch_sizes": [2], "warmup": 1, "iterations": 2}))
    code, _, err = run_cli("build", job, "--set", "calibration.batch_size=2")
    assert code == 0, err
    assert "calibration: 1 sample(s) left out: the model's batch size is fixed to 2" in err
    rep = json.loads((tmp_path / "out" / "j" / "report.json").read_text())
    assert rep["calibration"]["samples"] == 4 and rep["int8"]["accuracy"]["samples"] == 4
    np.save(tmp_path / "x.npy", RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))
    code, _, err = run_cli("build", job, "-q", "--set", "calibration.batch_size=2", "--set", "evaluation=null")
    assert code == 2 and "1 sample(s), fewer than the model's fixed batch of 2; give at least 2 samples" in err


def test_images_of_several_sizes_are_batched_by_size(tmp_path, run_cli):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(7):
        size = (16, 12) if i % 3 else (20, 8)  # 4 of one size, 3 of another, interleaved
        Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    path = conv_model(tmp_path, ["n", 3, "h", "w"])
    code, _, err = run_cli("build", _job(tmp_path, path, folder), "-q")
    assert code == 0, err
    from trtq.data.sources import batches, open_source
    from trtq.job import DataSpec

    inputs = prepare(path).inputs
    source = open_source(DataSpec(path=folder), inputs, "c")
    got = [(b.ids, b.feeds["x"].shape) for b in batches(source, inputs, 3, "c")]
    assert got == [(["1.png", "2.png", "4.png"], (3, 3, 12, 16)), (["0.png", "3.png", "6.png"], (3, 3, 8, 20)),
                   (["5.png"], (1, 3, 12, 16))]


def test_changing_input_shapes_does_not_reuse_statistics(tmp_path, run_cli):
    path = conv_model(tmp_path, ["n", 3, "h", "w"])
    np.save(tmp_path / "x.npy", RNG.normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    job = _job(tmp_path, path, tmp_path / "x.npy", input_shapes={"x": [1, 3, 8, 8]})
    assert run_cli("build", job, "-q")[0] == 0
    code, _, err = run_cli("build", job)
    assert "reusing calibration statistics" in err
    code, _, err = run_cli("build", job, "--set", "input_shapes=null")
    assert code == 0 and "reusing calibration statistics" not in err


# -- labels -----------------------------------------------------------------------------------------
def test_labels_for_another_model_are_an_error_and_labels_none_turns_them_off(tmp_path, run_cli):
    path = conv_model(tmp_path, ["n", 3, 8, 8])
    x = RNG.normal(0, 1, (6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.array([3, 1, 999, 0, 2, 4]))  # 999: an ImageNet class, 5 outputs
    job = _job(tmp_path, path, tmp_path / "d.npz", evaluation=_eval(tmp_path / "d.npz"))
    code, _, err = run_cli("build", job, "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "class_index 999, but the model's output 'y' has 5 classes" in err and "labels: none" in err
    code, _, err = run_cli("build", job, "-q", "--set", "evaluation.labels=none")
    assert code == 0, err
    acc = json.loads((tmp_path / "out" / "j" / "report.json").read_text())["int8"]["accuracy"]
    assert "top1" not in acc and "top1_agreement" in acc


def test_a_constant_input_need_not_be_in_the_data_but_real_inputs_must():
    from trtq.data.sources import Sample, _check_sample
    from trtq.model.load import InputSpec

    inputs = [InputSpec("x", (None, 2), np.dtype(np.float32)),
              InputSpec("sr", (), np.dtype(np.int64), None, np.array(16000))]
    assert set(_check_sample(Sample("s", {"x": np.zeros(2, np.float32)}), inputs, "c")) == {"x"}
    with pytest.raises(DataError, match="missing x"):
        _check_sample(Sample("s", {"sr": np.array(1)}), inputs, "c")


# -- control flow a constant decides ------------------------------------------------------------------
def if_model(tmp_path):
    """y = If(sr == 16000, Conv_a(x), Conv_b(x)): the network inside the branches, as silero-vad exports it."""
    def branch(name, scale):
        w = numpy_helper.from_array((RNG.normal(0, .5, (4, 3, 1, 1)) * scale).astype(np.float32), f"{name}_w")
        conv = helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_out"], name=f"{name}_conv")
        return helper.make_graph([conv], name, [], [_vi(f"{name}_out", ["n", 4, 8, 8])], [w])

    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(16000, np.int64))),
             helper.make_node("Equal", ["sr", "k"], ["is16k"], name="eq"),
             helper.make_node("If", ["is16k"], ["y"], name="if16k", then_branch=branch("a", 1.0),
                              else_branch=branch("b", 3.0))]
    ins = [_vi("x", ["n", 3, 8, 8]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    return _save(tmp_path, nodes, ins, [_vi("y", ["n", 4, 8, 8])], [], "if.onnx")


@pytest.mark.parametrize("rate, branch", [(16000, "a_conv"), (8000, "b_conv")])
def test_an_if_on_a_constant_input_is_replaced_by_its_branch(tmp_path, rate, branch):
    import onnxruntime as ort

    from trtq.job import InputOptions

    path = if_model(tmp_path)
    plain = prepare(path)
    assert plain.plan.nodes == [] and plain.plan.in_subgraphs == {"if16k": 2}
    with pytest.raises(Exception, match=r"all 2 weighted ops are inside control-flow subgraphs \(if16k \(2\)\)"):
        plain.require_quantizable()
    folded = prepare(path, inputs={"sr": InputOptions(value=rate)})
    assert folded.folded == ["if16k"] and [q.node for q in folded.plan.nodes] == [branch]
    feeds = {"x": RNG.normal(0, 1, (2, 3, 8, 8)).astype(np.float32), "sr": np.array(rate, np.int64)}
    want = ort.InferenceSession(str(path)).run(None, feeds)[0]
    got = ort.InferenceSession(folded.model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(got, want)


def test_an_if_on_data_is_left_alone(tmp_path):
    from trtq.job import InputOptions

    path = if_model(tmp_path)
    # a batched constant cannot decide a branch for the whole model: nothing is folded
    assert prepare(path, inputs={"x": InputOptions(value=np.zeros((3, 8, 8)).tolist())}).folded == []


# -- preprocessing for detectors and OCR ---------------------------------------------------------------
def _image(tmp_path, w, h, value=200):
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(tmp_path / "im.png")
    return tmp_path / "im.png"


def test_letterbox_keeps_the_aspect_and_fills_the_rest(tmp_path):
    from trtq.data.preprocess import load_image
    from trtq.job import Preprocess

    x = load_image(_image(tmp_path, 200, 100), Preprocess(letterbox=(64, 64), fill=114))
    assert x.shape == (3, 64, 64)
    assert np.all(x[:, :16] == 114) and np.all(x[:, 48:] == 114) and np.all(x[:, 16:48] == 200)


def test_text_lines_resize_to_a_height_and_pad_right_after_normalizing(tmp_path):
    from trtq.data.preprocess import load_image
    from trtq.job import Preprocess

    spec = Preprocess(resize_height=48, pad_width=320, scale=1 / 255, mean=0.5, std=0.5, color="BGR")
    x = load_image(_image(tmp_path, 100, 24, 255), spec)  # 100x24 → 200x48, then padded to 320
    assert x.shape == (3, 48, 320)
    assert np.allclose(x[:, :, :200], 1.0) and np.all(x[:, :, 200:] == 0.0)
    assert load_image(_image(tmp_path, 1000, 24), spec).shape == (3, 48, 320)  # wider: squeezed to the width


def test_multiple_of_rounds_each_side_and_geometries_are_exclusive(tmp_path):
    from pydantic import ValidationError

    from trtq.data.preprocess import load_image
    from trtq.job import Preprocess

    assert load_image(_image(tmp_path, 330, 250), Preprocess(multiple_of=32)).shape == (3, 256, 320)
    with pytest.raises(ValidationError, match="give one of resize, resize_to, letterbox, resize_height"):
        Preprocess(resize=256, letterbox=(640, 640))
    with pytest.raises(ValidationError, match="pad_width goes with resize_height"):
        Preprocess(pad_width=320)


# -- the per-layer analysis within the memory budget -----------------------------------------------------
def test_per_layer_analysis_in_passes_equals_one_pass(tiny):
    from trtq.calib.collect import collect
    from trtq.calib.methods import MinMax, compute_ranges
    from trtq.data.sources import Batch
    from trtq.evaluation.per_layer import per_layer_errors
    from trtq.model.load import expose_tensors
    from trtq.quant.qdq import insert_qdq
    from trtq.runtime.onnxruntime import Runner, session

    prepared = prepare(tiny["model"])
    x = tiny["x"]
    batches = [Batch({"input": x[i:i + 8]}, None, [str(j) for j in range(i, i + 8)]) for i in (0, 8, 16)]
    acts = prepared.plan.activations
    stats = collect(Runner(session(expose_tensors(prepared.model, acts))), acts, batches)
    qdq = insert_qdq(prepared.model, prepared.plan, compute_ranges(stats, MinMax()), "onnxruntime")

    def run(budget):
        return per_layer_errors(prepared.model, qdq, prepared.plan, lambda: batches, 24,
                                lambda m, optimize: Runner(session(m, optimize=optimize)), prepared.inputs, budget)

    whole, parts = run(1 << 30), run(1)  # 1 byte: every tensor alone, one pass each
    tensors = {t for r in whole["layers"] for t in (r["input"], r["output"])}
    assert whole["passes"] == 1 and parts["passes"] == len(tensors) == 8
    assert parts["samples"] == whole["samples"] == 24 and parts["worst"] == whole["worst"]
    for a, b in zip(whole["layers"], parts["layers"]):
        assert a["output_sqnr_db"] == pytest.approx(b["output_sqnr_db"], rel=1e-9)
