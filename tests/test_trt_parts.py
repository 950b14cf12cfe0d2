"""The CPU-testable parts of the TensorRT backend: .plan metadata, engine-inspector summaries,
optimization profiles, cache header numbers, job checks, FP16 casting of excluded layers."""

import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from trtq.engine import tensorrt as trt_backend
from trtq.errors import BackendError, JobError
from trtq.job import load_job
from trtq.model.load import InputSpec
from trtq.quant.precision import cast_nodes_fp16
from trtq.trt.builder import Profile, resolve_profiles
from trtq.trt.inspect import summarize, tensor_precision
from trtq.trt.plan import check_compatible, meta_path, read_meta, write_plan

DATA = Path(__file__).parent / "data"
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


# -- .plan files -----------------------------------------------------------------------------
def test_plan_written_with_metadata_and_loaded_only_where_it_fits(tmp_path):
    plan = tmp_path / "engine.plan"
    meta = write_plan(plan, b"\x01\x02plan-bytes", {"tensorrt_version": "10.16.1.11", "gpu": GPU})
    assert plan.read_bytes() == b"\x01\x02plan-bytes"
    assert json.loads(meta_path(plan).read_text()) == meta
    assert meta["bytes"] == 12 and len(meta["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.plan", "engine.plan.json"]
    assert check_compatible(plan, read_meta(plan), "10.16.1.11", GPU) == b"\x01\x02plan-bytes"
    with pytest.raises(BackendError, match="built with TensorRT 10.16.1.11, this machine has TensorRT 11.4.0.106"):
        check_compatible(plan, meta, "11.4.0.106", GPU)
    with pytest.raises(BackendError, match=r"compute capability 9.0\), this GPU is NVIDIA L4 \(compute capability 8.9"):
        check_compatible(plan, meta, "10.16.1.11", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    plan.write_bytes(b"\x01\x02plan-bytez")
    with pytest.raises(BackendError, match="does not match the SHA-256"):
        check_compatible(plan, meta, "10.16.1.11", GPU)


def test_missing_plan_or_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="engine not found"):
        read_meta(tmp_path / "engine.plan")
    (tmp_path / "engine.plan").write_bytes(b"x")
    with pytest.raises(BackendError, match="engine.plan.json: missing"):
        read_meta(tmp_path / "engine.plan")


# -- engine inspector ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, expected", [
    ("Thirty-two wide channel vectorized row major Int8 format.", "INT8"),
    ("Row major linear FP32", "FP32"), ("Float", "FP32"), ("Half", "FP16"),
    ("Channel major FP16 format where channel % 4 == 0", "FP16"), ("N/A due to dynamic shapes", None),
])
def test_tensor_precision(fmt, expected):
    assert tensor_precision(fmt) == expected


def test_inspector_summary_counts_int8_fallbacks_and_reformats():
    s = summarize((DATA / "inspector_layers.json").read_text())
    assert s["detailed"] and s["layers"] == 6
    assert s["compute_layers"] == 3 and s["int8_layers"] == 1
    assert [(f["name"], f["precision"]) for f in s["fallback_layers"]] == [("/classifier/Gemm", "FP32"),
                                                                           ("/stem/conv/Conv", "FP16")]
    assert [(r["from"], r["to"]) for r in s["reformat_layers"]] == [("FP32", "INT8"), ("FP16", "FP32")]
    assert s["int8_fraction"] == pytest.approx(1 / 3)


def test_inspector_without_detailed_verbosity_says_so():
    s = summarize({"Layers": ["conv1 + relu1", "fc"], "Bindings": ["x", "y"]})
    assert s == {"detailed": False, "layers": 2, "note": s["note"]} and "DETAILED" in s["note"]


# -- builder inputs --------------------------------------------------------------------------
def test_profiles_default_to_the_jobs_batch_sizes_and_check_given_ones():
    shapes = {"x": (-1, 3, 224, 224), "fixed": (1, 10)}
    assert resolve_profiles(shapes, {}, [8, 1, 32]) == {"x": Profile((1, 3, 224, 224), (8, 3, 224, 224),
                                                                       (32, 3, 224, 224))}
    given = {"x": Profile((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))}
    assert resolve_profiles(shapes, given, [8]) == given
    with pytest.raises(JobError, match=r"tensorrt.profiles.x.opt: \[4, 3, 200, 224\] does not fit"):
        resolve_profiles(shapes, {"x": Profile((1, 3, 224, 224), (4, 3, 200, 224), (16, 3, 224, 224))}, [8])
    with pytest.raises(JobError, match="min <= opt <= max"):
        resolve_profiles(shapes, {"x": Profile((8, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))}, [8])
    with pytest.raises(JobError, match="tensorrt.profiles.y: the model has no input of that name"):
        resolve_profiles(shapes, {"y": Profile((1,), (1,), (1,))}, [8])
    with pytest.raises(JobError, match="dynamic dimensions .* beyond the batch"):
        resolve_profiles({"x": (-1, 3, -1, -1)}, {}, [8])


@pytest.mark.parametrize("version, number", [("7.2.2", "7202"), ("8.6.1.6", "8601"), ("10.3.0.26", "100300"),
                                             ("10.16.1.11", "101601")])
def test_cache_header_version_numbers(version, number):
    # 7202 and 8601 are the headers real TensorRT 7.2.2 / 8.6.1 caches carry (tests/data, facts §3)
    assert trt_backend.version_number(version) == number


def _job(tmp_path, **sections):
    import yaml

    (tmp_path / "m.onnx").write_bytes(b"")
    doc = {"name": "j", "model": "m.onnx", "calibration": {"path": "."}, **sections}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    return load_job(tmp_path / "job.yaml")


def test_implicit_mode_is_refused_on_tensorrt_11(tmp_path):
    job = _job(tmp_path, quantization={"target": "tensorrt"}, tensorrt={"mode": "implicit"})
    trt_backend.check_target(job.tensorrt, types.SimpleNamespace(__version__="10.16.1.11"))
    with pytest.raises(JobError, match="tensorrt.mode: implicit needs TensorRT 10.x .* use mode: explicit"):
        trt_backend.check_target(job.tensorrt, types.SimpleNamespace(__version__="11.4.0.106"))
    with pytest.raises(BackendError, match="TensorRT 8.5.3.1: trtq builds engines with TensorRT 8.6 or newer"):
        trt_backend.check_target(job.tensorrt, types.SimpleNamespace(__version__="8.5.3.1"))


def test_tensorrt_job_keys_are_validated(tmp_path):
    with pytest.raises(JobError, match="calibrator: source: tensorrt runs TensorRT's own calibrator"):
        _job(tmp_path, calibrator={"method": "percentile", "source": "tensorrt"})
    with pytest.raises(JobError, match="tensorrt.worksapce_mb: unknown key; did you mean 'workspace_mb'"):
        _job(tmp_path, tensorrt={"worksapce_mb": 1024})
    job = _job(tmp_path, tensorrt={"timing_cache": "cache/timing.bin", "profiles": {"x": {
        "min": [1, 3], "opt": [4, 3], "max": [8, 3]}}})
    assert job.tensorrt.timing_cache == (tmp_path / "cache/timing.bin").resolve()


def test_calibration_shapes_follow_the_batch_size_or_the_job(tmp_path):
    inputs = [InputSpec("x", (None, 3, 8, 8), np.dtype(np.float32))]
    job = _job(tmp_path, calibration={"path": ".", "batch_size": 16})
    (spec,) = trt_backend.calibration_specs(job.tensorrt, job.calibration.batch_size, inputs)
    assert spec.shape == (16, 3, 8, 8) and spec.dtype == np.float32
    job = _job(tmp_path, tensorrt={"calibration_shapes": {"x": [4, 3, 9, 8]}})
    with pytest.raises(JobError, match=r"tensorrt.calibration_shapes.x: \[4, 3, 9, 8\] does not fit"):
        trt_backend.calibration_specs(job.tensorrt, job.calibration.batch_size, inputs)


# -- FP16 layers in a strongly typed graph -----------------------------------------------------
def _two_conv_model():
    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    b1 = rng.normal(size=4).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_excluded_layers_cast_to_fp16_compute_in_fp16_and_keep_the_graph_interface():
    model = _two_conv_model()
    half = cast_nodes_fp16(model, ["conv1"])
    onnx.checker.check_model(half, full_check=True)
    conv1 = next(n for n in half.graph.node if n.name == "conv1")
    inits = {i.name: i for i in half.graph.initializer}
    assert list(conv1.input) == ["x__fp16", "w1__fp16", "b1__fp16"]
    assert inits["w1__fp16"].data_type == TensorProto.FLOAT16 and "w1" not in inits and "w2" in inits
    assert [n.op_type for n in half.graph.node] == ["Cast", "Conv", "Cast", "Relu", "Conv"]
    assert [i.name for i in half.graph.input] == ["x"] and [o.name for o in half.graph.output] == ["y"]
    x = np.random.default_rng(2).normal(size=(1, 3, 5, 5)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = ReferenceEvaluator(half).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(got, ref), "conv1 really ran in FP16"
    with pytest.raises(ValueError, match="no node named 'nope'"):
        cast_nodes_fp16(model, ["nope"])


def test_doctor_reports_what_this_machine_allows(run_cli):
    code, out, _ = run_cli("doctor", "--json")
    assert code == 0
    facts = json.loads(out)
    assert "CPUExecutionProvider" in facts["onnxruntime_providers"]
    assert facts["allows"][0].startswith("target: onnxruntime")
    if facts["tensorrt"] is None:
        assert "trtq[tensorrt-cu12]" in facts["tensorrt_error"] and len(facts["allows"]) == 1
    if facts["gpu"] is None:
        assert facts["gpu_error"] and "\n" not in facts["gpu_error"]


# -- the pipeline's wiring of the TensorRT target (TensorRT itself is not run: only trtq's calls) ----
def test_tensorrt_target_hands_the_engine_stage_the_jobs_pieces(tiny, monkeypatch, tmp_path):
    import trtq.engine.tensorrt as trt_engine
    from conftest import write_job

    from trtq.calib.ranges import Range
    from trtq.pipeline.build import build

    seen = {}

    def fake_build_plan(spec, calibrator, batch_sizes, stage, model, ranges, inputs, calibration_batches, excluded,
                        progress):
        seen.update(spec=spec, calibrator=calibrator, batch_sizes=batch_sizes, ranges=ranges, excluded=excluded,
                    qdq_exists=(stage / "model.int8.onnx").is_file(), feeds=list(calibration_batches()))
        (stage / "engine.plan").write_bytes(b"plan")
        return {"path": "engine.plan", "kind": "tensorrt", "tensorrt_version": "10.16.1.11", "mode": "explicit"}

    monkeypatch.setattr(trt_engine, "find_tensorrt", lambda: (types.SimpleNamespace(__version__="10.16.1.11"), None))
    monkeypatch.setattr(trt_engine, "build_plan", fake_build_plan)
    monkeypatch.setattr(trt_engine, "inspect_plan", lambda plan, inputs, engine: {"detailed": False})
    job = {**tiny["job"], "quantization": {"target": "tensorrt", "exclude_nodes": ["conv"], "keep_precision": "fp16"},
           "tensorrt": {"workspace_mb": 64}, "calibration": {"path": "data.npz", "batch_size": 6}}
    job.pop("evaluation")
    result = build(load_job(write_job(tiny["dir"] / "trt.yaml", job)), tmp_path)
    assert seen["spec"].workspace_mb == 64 and seen["calibrator"].method == "minmax"
    assert seen["batch_sizes"] == [6] and seen["excluded"] == ["conv"] and seen["qdq_exists"]
    assert all(isinstance(r, Range) for r in seen["ranges"].values())
    assert [len(f["input"]) for f in seen["feeds"]] == [6, 6, 6, 6]
    q = result.report["quantization"]
    assert q["excluded"] == [["conv", "excluded by the job"]] and q["excluded_precision"] == "fp16"
    assert result.report["engine"]["inspection"] == {"detailed": False}
    assert "kept out of INT8 (in FP16): `conv`" in (result.out_dir / "report.md").read_text()


def test_cache_header_version_comes_from_the_job_else_the_installed_tensorrt_else_8601(tmp_path):
    from trtq.job import CalibratorSpec

    assert trt_backend.cache_version(CalibratorSpec(cache_version="8601"), "10.16.1.11") == \
        ("8601", "calibrator.cache_version")
    assert trt_backend.cache_version(CalibratorSpec(), "10.3.0.26") == ("100300", "TensorRT 10.3.0.26 installed here")
    version, origin = trt_backend.cache_version(CalibratorSpec(), None)
    assert version == "8601" and "no TensorRT here" in origin and "set calibrator.cache_version" in origin


def test_build_states_the_cache_header_and_takes_the_installed_tensorrts(tiny, run_cli, monkeypatch):
    import trtq.engine.tensorrt as trt_engine

    code, out, err = run_cli("build", tiny["job_path"], "-q")
    assert code == 0, err
    folder = tiny["dir"] / "out" / "tiny"
    assert (folder / "calibration.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")
    report = json.loads((folder / "report.json").read_text())
    assert report["calibration"]["cache_header"]["header"] == "TRT-8601-EntropyCalibration2"
    assert "no TensorRT here" in report["calibration"]["cache_header"]["from"]
    assert "calibration.cache header TRT-8601-EntropyCalibration2: trtq's default; no TensorRT here" in out
    assert "header `TRT-8601-EntropyCalibration2` (trtq's default" in (folder / "report.md").read_text()
    monkeypatch.setattr(trt_engine, "installed_version", lambda: "10.16.1.11")
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    assert (folder / "calibration.cache").read_text().startswith("TRT-101601-EntropyCalibration2\n")


@pytest.mark.parametrize("version, refused", [("10.7.0.23", False), ("10.8.0.43", True), ("10.16.1.11", True),
                                              ("11.0.0.114", True), ("11.4.0.106", False)])
def test_dla_core_is_refused_where_tensorrt_has_no_dla(tmp_path, version, refused):
    # NVIDIA's "Working with DLA" (11.3/11.4 docs): 10.7 was the last 10.x release with DLA,
    # 11.0-11.3 have none, 11.4 brings it back on some platforms
    job = _job(tmp_path, quantization={"target": "tensorrt"}, tensorrt={"dla_core": 0})
    if not refused:
        trt_backend.check_target(job.tensorrt, types.SimpleNamespace(__version__=version))
        return
    with pytest.raises(JobError, match=rf"tensorrt.dla_core: TensorRT {version} has no DLA support"):
        trt_backend.check_target(job.tensorrt, types.SimpleNamespace(__version__=version))


def test_strong_typing_is_read_from_the_version_not_probed():
    from trtq.trt.builder import has_strong_typing, network_flags

    # only __version__ is read: an object without NetworkDefinitionCreationFlag would fail a probe
    assert not has_strong_typing(types.SimpleNamespace(__version__="8.6.1.6"))
    assert has_strong_typing(types.SimpleNamespace(__version__="10.0.1"))
    # 11.x: every network is strongly typed and STRONGLY_TYPED is deprecated, ignored: no flag
    assert network_flags(types.SimpleNamespace(__version__="11.4.0.106"), strongly_typed=True) == 0
