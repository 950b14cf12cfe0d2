"""Bad input beyond the matrix of tests/test_bad_input.py: one line naming the file/key/tensor, exit
code 2, no traceback, nothing written."""


import numpy as np
import onnx
from conftest import assert_clean_error as _assert_clean_error
from conftest import job_with as _job
from conftest import write_job


def test_unknown_key_suggests_the_close_match(tiny, run_cli):
    code, _, err = run_cli("build", _job(tiny, calibration__batchsize=4))
    _assert_clean_error(code, err, "job.yaml", "calibration.batchsize", "did you mean 'batch_size'")


def test_misspelled_top_level_key(tiny, run_cli):
    code, _, err = run_cli("build", _job(tiny, calibrater={"method": "minmax"}))
    _assert_clean_error(code, err, "calibrater", "did you mean 'calibrator'")


def test_unknown_method(tiny, run_cli):
    code, _, err = run_cli("build", _job(tiny, calibrator__method="entropyy"))
    _assert_clean_error(code, err, "calibrator.method", "'minmax'")


def test_missing_required_key(tiny, run_cli):
    job = dict(tiny["job"])
    del job["model"]
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job))
    _assert_clean_error(code, err, "model", "required")


def test_missing_job_file(tmp_path, run_cli):
    code, _, err = run_cli("build", tmp_path / "nope.yaml")
    _assert_clean_error(code, err, "nope.yaml", "not found")


def test_npz_whose_arrays_match_no_input(tiny, run_cli):
    np.savez(tiny["dir"] / "bad.npz", a=np.zeros((2, 3, 8, 8), np.float32), b=np.zeros((2, 3, 8, 8), np.float32))
    code, _, err = run_cli("build", _job(tiny, calibration__path="bad.npz"))
    _assert_clean_error(code, err, "bad.npz", "match no model input")


def test_skip_past_the_end_is_empty(tiny, run_cli):
    code, _, err = run_cli("build", _job(tiny, calibration__skip=1000))
    _assert_clean_error(code, err, "calibration", "no samples left", out_dir=tiny["dir"] / "out")


def test_interrupted_build_leaves_nothing_and_keeps_the_previous_build(tiny, run_cli, monkeypatch):
    assert run_cli("build", tiny["job_path"], "-q")[0] == 0
    out = tiny["dir"] / "out"
    before = {p.name: p.read_bytes() for p in (out / "tiny").iterdir()}

    import trtq.pipeline.variants as variants_mod  # where the build's Q/DQ models are made

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(variants_mod, "insert_qdq", interrupt)
    code, _, err = run_cli("build", tiny["job_path"], "-q")
    _assert_clean_error(code, err, "interrupted")
    assert sorted(p.name for p in out.iterdir()) == [".trtq-stats", "tiny"], "a staging folder was left behind"
    assert {p.name: p.read_bytes() for p in (out / "tiny").iterdir()} == before


def test_failed_first_build_leaves_no_output(tiny, run_cli, monkeypatch):
    import trtq.pipeline.build as build_mod

    monkeypatch.setattr(build_mod, "write_report", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = run_cli("build", tiny["job_path"], "-q")
    _assert_clean_error(code, err, "interrupted", out_dir=tiny["dir"] / "out")


def test_fixed_batch_model_with_another_batch_size(tiny, run_cli):
    import onnx
    from conftest import tiny_model

    onnx.save(tiny_model(batch=1), tiny["dir"] / "fixed.onnx")
    code, _, err = run_cli("build", _job(tiny, model="fixed.onnx"))
    _assert_clean_error(code, err, "calibration.batch_size", "fixed batch of 1")


def test_bad_override_syntax_and_unknown_override_key(tiny, run_cli):
    code, _, err = run_cli("build", tiny["job_path"], "--set", "calibration.batch_size")
    _assert_clean_error(code, err, "--set", "KEY.PATH=VALUE")
    code, _, err = run_cli("build", tiny["job_path"], "--set", "calibration.bacth_size=2")
    _assert_clean_error(code, err, "calibration.bacth_size", "did you mean 'batch_size'")


def test_unknown_excluded_node(tiny, run_cli):
    code, _, err = run_cli("build", _job(tiny, quantization={"exclude_nodes": ["fc3"]}))
    _assert_clean_error(code, err, "exclude_nodes", "'fc3'", "did you mean 'fc")


def test_labels_csv_missing_an_image(tmp_path, run_cli):
    import onnx
    from conftest import tiny_model
    from PIL import Image

    onnx.save(tiny_model(), tmp_path / "m.onnx")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 12), (i * 40, 10, 200)).save(imgs / f"{i}.png")
    (imgs / "labels.csv").write_text("file,class_index\n0.png,1\n1.png,2\n")
    job = write_job(tmp_path / "j.yaml", {"name": "j", "model": "m.onnx",
                                          "calibration": {"path": "imgs", "preprocess": {"resize": 8, "crop": 8}}})
    code, _, err = run_cli("build", job)
    _assert_clean_error(code, err, "labels.csv", "2.png")


def test_model_whose_activations_overflow(tiny, run_cli):
    """Finite data, but the FP32 model itself produces inf: the build names the tensor."""
    from onnx import numpy_helper

    model = onnx.load(tiny["model"])
    for i, init in enumerate(model.graph.initializer):
        if init.name == "conv.w":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e38, "conv.w"))
    onnx.save(model, tiny["dir"] / "overflow.onnx")
    code, _, err = run_cli("build", _job(tiny, model="overflow.onnx"))
    _assert_clean_error(code, err, "NaN or infinite values", "check the preprocessing and the model",
                        out_dir=tiny["dir"] / "out")


def test_inspect_json_gives_whole_names_and_exclude_suggests_a_weighted_op(tiny, run_cli):
    import json as _json

    code, out, _ = run_cli("inspect", tiny["model"], "--json")
    assert code == 0
    doc = _json.loads(out)
    assert [q["node"] for q in doc["quantized"]] == ["conv", "convt", "fc1", "fc2", "mm"]
    assert doc["inputs"][0] == {"name": "input", "shape": [None, 3, 8, 8], "dtype": "float32", "batch_axis": 0}
    code, _, err = run_cli("build", tiny["job_path"], "-q", "--set", "quantization.exclude_nodes=[fc3]")
    assert code == 2 and ("did you mean 'fc1'?" in err or "did you mean 'fc2'?" in err)
    code, _, err = run_cli("build", tiny["job_path"], "-q", "--set", "quantization.exclude_nodes=[flat1]")
    assert code == 2 and "'flat'" not in err and "listed by 'trtq inspect MODEL'" in err  # Flatten: nothing to exclude
