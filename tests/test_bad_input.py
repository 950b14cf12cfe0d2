"""The bad-input matrix: every class of bad input the README promises to handle, through the CLI.

Each case must end in exit status 2 with one line on stderr naming the file, key or tensor at
fault, no traceback, no RuntimeWarning, nothing partial left in the job's folder and a previous
build there untouched. Signals, a full disk and a YAML alias bomb need a real process or a real
filesystem and have their own tests below.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, job_with, tiny_model, write_job
from onnx import numpy_helper


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the statistics store (complete or absent) and bytecode."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".trtq-stats" not in p.parts and "__pycache__" not in p.parts}


def _after(_, value):
    return value


# -- the cases: each writes its input into the tiny job's folder and returns (argv, needles) -------
def _malformed_yaml(t):
    (t["dir"] / "bad.yaml").write_text("name: tiny\ncalibration: [path: x\n")
    return ["build", t["dir"] / "bad.yaml"], ("bad.yaml:3", "malformed YAML")


def _top_level_typo(t):
    job = dict(t["job"])
    job["calibraton"] = job.pop("calibration")
    return ["build", write_job(t["dir"] / "job.yaml", job)], ("calibraton", "did you mean 'calibration'")


def _loader(t, body: str):
    (t["dir"] / "loader_mod.py").write_text("import numpy as np\n" + body)
    return ["build", job_with(t, calibration={"loader": "loader_mod.py:batches"})]


def _model_bytes(t, name: str, data: bytes):
    (t["dir"] / name).write_bytes(data)
    return ["build", job_with(t, model=name)]


def _npz(t, x, **changes):
    np.savez(t["dir"] / "bad.npz", input=x)
    return ["build", job_with(t, calibration__path="bad.npz", **changes)]


def _with(t, index, value, dtype=np.float32):
    x = t["x"].astype(dtype)
    x[index] = value
    return x


def _cache(t, bad_hex: str):
    """A cache for the tiny model with one tensor's scale replaced by ``bad_hex``."""
    from trtq.model.prepare import prepare

    acts = prepare(t["model"]).plan.activations
    lines = ["TRT-8601-EntropyCalibration2"] + [f"{a}: {bad_hex if i == 1 else '3c010a14'}" for i, a in enumerate(acts)]
    (t["dir"] / "bad.cache").write_text("\n".join(lines) + "\n")
    return ["cache", "to-qdq", t["model"], t["dir"] / "bad.cache", "-o", t["dir"] / "out" / "q.onnx"], acts[1]


MID_STREAM = "def batches():\n    yield {'input': np.zeros((2, 3, 8, 8), np.float32)}\n    raise RuntimeError('disk went away')\n"
CASES = {
    "malformed YAML": _malformed_yaml,
    "top-level key typo": _top_level_typo,
    "nested key typo": lambda t: (["build", job_with(t, calibrator__methd="minmax")], ("calibrator.methd", "did you mean 'method'")),
    "wrong type": lambda t: (["build", job_with(t, calibration__batch_size="eight")], ("calibration.batch_size", "'eight'")),
    "a union key's value": lambda t: (["build", job_with(t, calibration__preprocess={"crop": [1, 2, 3]})],
                                      ("calibration.preprocess.crop", "valid integer, or", "at most 2 items")),
    "name with ../": lambda t: (["build", job_with(t, name="../escape")], ("name", "'../escape'")),
    "missing model": lambda t: (["build", job_with(t, model="missing.onnx")], ("missing.onnx", "not found")),
    "not ONNX": lambda t: (_model_bytes(t, "fake.onnx", b"not a protobuf \xff\xfe" * 10), ("fake.onnx", "not an ONNX model")),
    "truncated model": lambda t: (_model_bytes(t, "cut.onnx", t["model"].read_bytes()[:700]), ("cut.onnx",)),
    "wrong input name": lambda t: (_loader(t, "def batches():\n    yield {'image': np.zeros((2, 3, 8, 8), np.float32)}\n"),
                                   ("unknown image", "missing input")),
    "wrong shape": lambda t: (_npz(t, np.zeros((4, 3, 9, 9), np.float32)), ("'input'", "3x9x9", "3x8x8")),
    "wrong dtype": lambda t: (_npz(t, np.zeros((4, 3, 8, 8), np.complex64)), ("'input'", "complex64")),
    "empty data": lambda t: (_after((t["dir"] / "empty").mkdir(), ["build", job_with(t, calibration__path="empty")]),
                             ("calibration.path", "empty")),
    "NaN": lambda t: (_npz(t, _with(t, (5, 1, 2, 3), np.nan)), ("bad.npz[5]", "'input'", "NaN or Inf")),
    "Inf": lambda t: (_npz(t, _with(t, (0, 0, 0, 0), -np.inf)), ("bad.npz[0]", "'input'", "NaN or Inf")),
    "float64 beyond float32": lambda t: (_npz(t, _with(t, (3, 0, 1, 1), 1e39, np.float64)),
                                         ("bad.npz[3]", "'input'", "1e+39", "float32")),
    "unwritable output": lambda t: (_after((t["dir"] / "a_file").write_text("x"), ["build", job_with(t, output="a_file/out")]),
                                    ("output", "a_file", "--out")),
    "loader raises at import": lambda t: (_loader(t, "raise RuntimeError('no GPU here')\n"),
                                          ("calibration.loader", "loader_mod.py:batches", "RuntimeError: no GPU here")),
    "loader raises when called": lambda t: (_loader(t, "def batches():\n    raise KeyError('split')\n"),
                                            ("calibration.loader", "KeyError: 'split'", "when called")),
    "loader raises mid-stream": lambda t: (_loader(t, MID_STREAM), ("calibration.loader", "RuntimeError: disk went away",
                                                                    "batch 1")),
    "bench on a non-plan": lambda t: (_after((t["dir"] / "x.plan").write_bytes(b"junk"), ["bench", t["dir"] / "x.plan"]),
                                      ("x.plan", "trtexec --loadEngine")),
    "bench on a non-ONNX file": lambda t: (_after((t["dir"] / "x.bin").write_bytes(b"junk"), ["bench", t["dir"] / "x.bin"]),
                                           ("x.bin", "not an ONNX model")),
}


def _bad_scale(t, bad_hex):
    argv, tensor = _cache(t, bad_hex)
    return argv, (f"tensor '{tensor}'", "bad.cache", "finite and positive")


for _label, _hex in {"NaN": "7fc00000", "-inf": "ff800000", "+inf": "7f800000"}.items():  # 0: a zero range
    CASES[f"cache scale {_label}"] = lambda t, h=_hex: _bad_scale(t, h)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny, run_cli):
    previous = tiny["dir"] / "out" / "tiny"
    previous.mkdir(parents=True)
    (previous / "report.json").write_text("{}")  # stands for an earlier build, which must survive
    argv, needles = CASES[case](tiny)
    before = _files(tiny["dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a numpy warning would reach the user's screen
        code, _, err = run_cli(*argv, "-q") if argv[0] == "build" else run_cli(*argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    assert _files(tiny["dir"]) == before, "something was written, or something partial was left"


def test_tensorrt_bench_message_names_no_job_key(tiny, run_cli):
    (tiny["dir"] / "x.engine").write_bytes(b"junk")
    code, _, err = run_cli("bench", tiny["dir"] / "x.engine")
    assert code == 2 and "quantization.target" not in err and "x.engine" in err


# -- inputs that must still build --------------------------------------------------------------
def _zero_range(t):
    np.savez(t["dir"] / "zeros.npz", input=np.zeros((8, 3, 8, 8), np.float32))
    return job_with(t, calibration__path="zeros.npz", evaluation=None)


def _colliding_names(t):
    """A model that already holds tensors named like those Q/DQ insertion adds."""
    model = tiny_model()
    for name in ("input_scale", "input_zero_point", "conv.w_quantized", "conv.w_scale", "relu_out_dequantized"):
        model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), name))
    onnx.save(model, t["dir"] / "names.onnx")
    return job_with(t, model="names.onnx", evaluation=None)


@pytest.mark.parametrize("make", [_zero_range, _colliding_names], ids=["zero-range tensor", "Q/DQ-like names"])
def test_still_builds(make, tiny, run_cli):
    code, _, err = run_cli("build", make(tiny), "-q")
    assert code == 0, err
    model = onnx.load(tiny["dir"] / "out" / "tiny" / "model.int8.onnx")
    onnx.checker.check_model(model)
    names = [i.name for i in model.graph.initializer] + [o for n in model.graph.node for o in n.output]
    assert len(names) == len(set(names))


# -- a real process: signals ------------------------------------------------------------------
SLOW_LOADER = """import time
import numpy as np
def batches():
    for i in range(200):
        time.sleep(0.1)
        yield {'input': np.full((2, 3, 8, 8), i % 7, np.float32)}
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 128 + signal.SIGTERM, "terminated"),
                                           (signal.SIGINT, 2, "interrupted")])
def test_signal_mid_build_leaves_nothing(sig, code, word, tiny):
    (tiny["dir"] / "slow.py").write_text(SLOW_LOADER)
    job = job_with(tiny, calibration={"loader": "slow.py:batches", "batch_size": 2}, evaluation=None)
    out = tiny["dir"] / "out"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "report.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-m", "trtq", "build", str(job), "-q"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob(".tiny.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # calibrating by now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"trtq: {word}{err.strip().partition(word)[2]}"], err
    assert sorted(p.name for p in out.iterdir()) == ["tiny"], "a staging folder was left behind"
    assert (out / "tiny" / "report.json").read_text() == "{}"


# -- a real process: a YAML alias bomb ----------------------------------------------------------
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("where", ["name", "calibrator.options", "--set"])
def test_yaml_alias_bomb_is_bounded(where, tiny):
    job = ["name: *i" if where == "name" else "name: tiny", "model: tiny.onnx", "calibration: {path: data.npz}"]
    if where == "calibrator.options":
        job.append("calibrator: {class: 'cal.py:Cal', options: {x: *i}}")
    text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB + "\n".join(job) + "\n"
    args = ["--set", "calibrator.options={a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")) + "}"] if where == "--set" else []
    (tiny["dir"] / "bomb.yaml").write_text(text if where != "--set" else "name: tiny\nmodel: tiny.onnx\n"
                                           "calibration: {path: data.npz}\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trtq", "build", str(tiny["dir"] / "bomb.yaml"), *args], env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    seconds = time.monotonic() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "aliases expand to more than" in proc.stderr, proc.stderr
    assert seconds < 15 and peak_mb < 600, (seconds, peak_mb)
    assert not (tiny["dir"] / "out").exists()


# -- a real full disk: a tmpfs of a few pages -----------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of ``pages`` 4 KiB pages at tmp_path/disk (root only; skipped elsewhere)."""
    mounted = []

    def mount(pages: int) -> Path:
        where = tmp_path / "disk"
        where.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs to fill needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={4 * pages}k", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


LOADER = ("import numpy as np\ndef batches():\n    rng = np.random.default_rng(0)\n    for i in range(4):\n"
          "        yield {'input': rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)}\n")


# pages free → the artifact that no longer fits (ranges.json, the cache, channel_means.npz, model.int8.onnx
# each take one page; engine.ort.onnx is written by ONNX Runtime itself)
@pytest.mark.parametrize("pages,artifact", [(1, "calibration.cache"), (3, "model.int8.onnx"), (4, "engine.ort.onnx"),
                                            (5, "report.json")])
def test_disk_full_while_writing_artifacts(pages, artifact, tiny, run_cli, small_disk):
    disk = small_disk(pages)
    (tiny["dir"] / "loader_mod.py").write_text(LOADER)  # a loader: no statistics store takes the space
    job = job_with(tiny, calibration={"loader": "loader_mod.py:batches"}, evaluation=None, output=str(disk / "out"))
    code, _, err = run_cli("build", job, "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{disk / 'out' / 'tiny'}: no space left on device writing {artifact}" in err, err
    assert [str(p.relative_to(disk)) for p in disk.rglob("*")] == ["out"], "something partial was left"


def test_disk_full_while_storing_statistics(tiny, run_cli, small_disk):
    disk = small_disk(16)  # the tiny model's statistics take ~800 KB
    code, _, err = run_cli("build", job_with(tiny, evaluation=None, output=str(disk / "out")), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{disk / 'out' / '.trtq-stats'}: no space left on device writing " in err, err
    assert [str(p.relative_to(disk)) for p in disk.rglob("*")] == ["out", "out/.trtq-stats"], "a temporary was left"


def test_disk_full_in_a_library_write_is_one_line(tiny, run_cli, monkeypatch):
    """A write trtq does not route through write_atomic (a library's own) still ends in one line."""
    import errno

    import trtq.pipeline.build as build_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tiny["dir"] / "out" / "x"))

    monkeypatch.setattr(build_mod, "write_report", full)
    code, _, err = run_cli("build", job_with(tiny, evaluation=None), "-q")
    want = f"trtq: error: {tiny['dir'] / 'out' / 'x'}: no space left on device; free some space or choose another folder with --out"
    assert code == 2 and err.strip().splitlines() == [want], err
    assert [p.name for p in (tiny["dir"] / "out").iterdir()] == [".trtq-stats"], "something partial was left"


@pytest.mark.parametrize("values,dtype,fits", [([70000], np.int32, np.float16), ([-1e39], np.float64, np.float32),
                                               ([3, -5], np.int64, None), ([1e38], np.float64, None)])
def test_values_beyond_the_model_float_type(values, dtype, fits):
    """The cast would make them Inf; ints past float16's range included."""
    from trtq.data.sources import _check_fits
    from trtq.errors import DataError

    arr, target = np.array(values, dtype), np.dtype(fits or np.float32)
    if fits is None:
        _check_fits(arr, target, "x")
        return
    with pytest.raises(DataError, match=f"beyond the {target} range"):
        _check_fits(arr, target, "x")


def test_sigterm_to_a_parallel_run_leaves_nothing(tmp_path):
    """What a CI time-out does: SIGTERM to the whole process group of 'trtq run' with 2 workers."""
    onnx.save(tiny_model(), tmp_path / "tiny.onnx")
    (tmp_path / "slow.py").write_text(SLOW_LOADER)
    for name in ("a", "b", "c"):
        write_job(tmp_path / f"{name}.yaml", {"name": name, "model": "tiny.onnx", "output": "out",
                                              "calibration": {"loader": "slow.py:batches", "batch_size": 2}})
    proc = subprocess.Popen([sys.executable, "-m", "trtq", "run", str(tmp_path), "--workers", "2", "-q"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, deadline = tmp_path / "out", time.monotonic() + 90
    while len(list(out.glob(".*.partial-*"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("trtq: terminated"), err
    assert [p.name for p in out.iterdir() if p.name != ".trtq-stats"] == [], "a staging folder or a build was left"
