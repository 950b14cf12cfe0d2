"""Shared fixtures: a tiny model holding every weighted op kind, job files, the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TRTQ_SHARED", ROOT.parent / "shared"))


def need_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared data), which is absent on this machine")
    return path


def tiny_model(batch: int | str = "N") -> onnx.ModelProto:
    """input [N,3,8,8] → Conv → Relu → ConvTranspose → GAP → Flatten → Gemm(transB=1)
    → Gemm(transB=0) → MatMul → output [N,3]: one of every weighted op and weight layout."""
    rng = np.random.default_rng(42)
    w = {
        "conv.w": rng.normal(0, 0.5, (4, 3, 3, 3)), "conv.b": rng.normal(0, 0.1, 4),
        "convt.w": rng.normal(0, 0.5, (4, 2, 2, 2)), "convt.b": rng.normal(0, 0.1, 2),
        "fc1.w": rng.normal(0, 0.5, (5, 2)), "fc1.b": rng.normal(0, 0.1, 5),
        "fc2.w": rng.normal(0, 0.5, (5, 6)), "fc2.b": rng.normal(0, 0.1, 6),
        "mm.w": rng.normal(0, 0.5, (6, 3)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("ConvTranspose", ["relu_out", "convt.w", "convt.b"], ["convt_out"], name="convt", strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["convt_out"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Gemm", ["fc1_out", "fc2.w", "fc2.b"], ["fc2_out"], name="fc2"),
        helper.make_node("MatMul", ["fc2_out", "mm.w"], ["output"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny(tmp_path) -> dict:
    """A tiny model, 24 random samples with labels in an .npz, and a job file using them."""
    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), model_path)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", input=x, labels=rng.integers(0, 3, 24))
    job = {
        "name": "tiny",
        "model": "tiny.onnx",
        "calibration": {"path": "data.npz", "batch_size": 4},
        "calibrator": {"method": "minmax"},
        "evaluation": {"path": "data.npz", "batch_size": 4, "latency": {"batch_sizes": [1], "warmup": 1, "iterations": 3}},
        "output": "out",
    }
    return {"dir": tmp_path, "model": model_path, "x": x, "job": job, "job_path": write_job(tmp_path / "job.yaml", job)}


def assert_clean_error(code, err, *needles, out_dir: Path | None = None):
    """A user error as the README promises: exit 2, one line naming ``needles``, no traceback,
    and (``out_dir``) no partial artifact — only the atomically written statistics store."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    if out_dir is not None and out_dir.exists():
        assert [p.name for p in out_dir.iterdir() if p.name != ".trtq-stats"] == [], "partial artifacts were left behind"


def job_with(tiny: dict, **changes) -> Path:
    """The tiny job with ``section__key=value`` changes, written to job.yaml."""
    job = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tiny["job"].items()}
    for dotted, value in changes.items():
        node = job
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return write_job(tiny["dir"] / "job.yaml", job)


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture
def run_cli(capsys):
    """Run ``trtq ARGS`` in-process; return (exit code, stdout, stderr)."""
    from trtq.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- many-job runs (tests/test_run.py, tests/test_ray.py) ------------------------------------------
RUN_ARTIFACTS = ("model.int8.onnx", "calibration.cache", "ranges.json", "engine.ort.onnx", "channel_means.npz")


def artifact_bytes(folder: Path) -> dict[str, bytes]:
    """The build artifacts that must be byte-identical however a job was run."""
    return {f: (folder / f).read_bytes() for f in RUN_ARTIFACTS}


def write_sweep(folder: Path, name: str, samples: int, seed: int, **extra) -> Path:
    """tiny.onnx, ``samples`` labelled random samples and a job sweeping entropy/percentile/mse."""
    onnx.save(tiny_model(), folder / "tiny.onnx")
    rng = np.random.default_rng(seed)
    np.savez(folder / "data.npz", input=rng.normal(0, 1, (samples, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 3, samples))
    job = {"name": name, "model": "tiny.onnx", "calibration": {"path": "data.npz", "batch_size": 4},
           "evaluation": {"path": "data.npz", "batch_size": 4, "per_layer_samples": 4,
                          "latency": {"batch_sizes": [1], "warmup": 1, "iterations": 2}},
           "sweep": {"calibrator.method": ["entropy", "percentile", "mse"]}, **extra}
    return write_job(folder / "sweep.yaml", job)


def write_broken_job(folder: Path) -> Path:
    """A job named 'bad' whose model file is not ONNX (its build fails)."""
    (folder / "broken.onnx").write_bytes(b"not a model")
    return write_job(folder / "bad.yaml", {"name": "bad", "model": "broken.onnx", "calibration": {"path": "data.npz"}})
