"""Generated and mutated input through the readers the CLI calls: the TensorRT cache reader, the
job loader with ``--set``, and the data readers (.npy, .npz, image folders, labels.csv).

Each must give a result or trtq's own one-line error naming the file or key, within a time
bound (hypothesis' deadline) and a memory bound (tracemalloc), and decode what it reads right
(cache scales bit for bit, labels as written). Fixed seed (``derandomize``), no example database.
Nothing here may run code: a pickled .npy and a ``!!python/`` tag are refused.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trtq.calib import cache as trt_cache
from trtq.data.sources import batches, open_source
from trtq.errors import CacheError, DataError, JobError, TrtqError
from trtq.job import DataSpec, load_job
from trtq.model.load import input_specs

SETTINGS = settings(max_examples=300, deadline=2000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INPUTS = input_specs(tiny_model())
MEMORY_LIMIT = 1 << 30  # bytes one reading may allocate (images: at most MAX_PIXELS = 50 M, ~0.6 GB)


def _one_line(exc: TrtqError, *any_of: str) -> None:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    assert any(n in text for n in any_of), text


def _mutate(data: bytes, draw) -> bytes:
    """Truncate, overwrite, insert or delete bytes of ``data``."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


# -- the TensorRT cache ------------------------------------------------------------------------
NAMES = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=30)
FINITE_BITS = st.integers(0, 2**32 - 1).filter(lambda b: (b >> 23) & 0xFF != 0xFF)  # not NaN/inf


@SETTINGS
@given(st.dictionaries(NAMES, FINITE_BITS, min_size=1, max_size=8))
def test_cache_scales_decode_bit_for_bit(entries):
    text = "TRT-8601-EntropyCalibration2\n" + "".join(f"{n}: {b:08x}\n" for n, b in entries.items())
    cache = trt_cache.loads(text.encode())
    assert list(cache.scales) == list(entries)
    for name, bits in entries.items():
        assert struct.unpack("!I", struct.pack("!f", cache.scales[name]))[0] == bits, name


VALID_CACHE = b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\nrelu_out: 3d8c8b2a\n"


@SETTINGS
@given(st.booleans(), st.data())
def test_cache_reader_gives_a_cache_or_its_error(random_bytes, draw):
    data = draw.draw(st.binary(max_size=200)) if random_bytes else _mutate(VALID_CACHE, draw.draw)
    try:
        cache = trt_cache.loads(data, "x.cache")
    except CacheError as exc:
        _one_line(exc, "x.cache")
        return
    assert all(isinstance(v, float) for v in cache.scales.values())


# -- the job loader with --set -------------------------------------------------------------------
JOB = """name: tiny
model: tiny.onnx
calibration:
  path: data.npz
  batch_size: 4
calibrator: {method: minmax, options: {a: 1}}
evaluation:
  path: data.npz
  latency: {batch_sizes: [1, 2]}
"""
KEYS = ["name", "model", "calibration.path", "calibration.batch_size", "calibration.preprocess.mean",
        "calibrator.method", "calibrator.options.x", "evaluation.latency.batch_sizes", "input_shapes.input",
        "tensorrt.profiles.input.min", "quantization.exclude_nodes", "sweep", "output"]
YAMLISH = st.text(st.sampled_from(list("{}[]:,&*!|>-'\"#%@`\n\t ?0123456789abcxyz.e+")), max_size=30)


@st.composite
def job_texts(draw):
    text = JOB.encode()
    if draw(st.booleans()):
        text = _mutate(text, draw)
    return text


@st.composite
def overrides(draw):
    key = draw(st.one_of(st.sampled_from(KEYS), st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,3}", fullmatch=True)))
    return f"{key}={draw(YAMLISH)}"


@SETTINGS
@given(job_texts(), st.lists(overrides(), max_size=3))
@example(b"name: !!python/object/apply:os.system [echo pwned]\n", [])
@example(JOB.encode() + b"name: other\n", [])
@example(b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", [])
@example(JOB.encode(), ["calibration.batch_size=" + "[" * 3000])
@example(JOB.encode(), ["model=a\x00b"])
@example(JOB.encode() + b"x" * 10**6 + b": 1\n", [])  # a huge misspelled key
@example(JOB.encode(), ["calibration.batch_size=" + "y" * 10**6])  # a huge wrong value
@example(JOB.encode(), ["calibrator.percentile=[" + ", ".join(["[1, 2, 3]"] * 5000) + "]"])  # 20,000 values
def test_job_loader_gives_a_job_or_its_error(text, sets):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_bytes(text)
        tracemalloc.start()
        try:
            job = load_job(path, sets, cwd=Path(tmp))
        except JobError as exc:
            _one_line(exc, "job.yaml", "--set")
            assert len(str(exc)) < 400
            return
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < MEMORY_LIMIT // 4, peak
    assert job.name and job.calibration.batch_size >= 1


def test_a_key_written_twice_is_named(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB + "name: other\n")
    with pytest.raises(JobError, match=r"job.yaml:10: key 'name' is written twice \(first on line 1\)"):
        load_job(tmp_path / "job.yaml")


# -- the data readers ----------------------------------------------------------------------------
def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png_bytes(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 240)).save(buf, "PNG")
    return buf.getvalue()


def _png_declaring(w: int, h: int) -> bytes:
    """A few hundred bytes declaring a ``w``×``h`` image (the IHDR chunk says so, no pixels)."""
    ihdr = struct.pack("!IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack("!I", len(body)) + kind + body + struct.pack("!I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


X = np.random.default_rng(0).normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
LABELS = np.array([2, 0, 1])


def _read(spec: DataSpec) -> list:
    """Everything a build reads from ``spec``, under the memory bound."""
    tracemalloc.start()
    try:
        out = list(batches(open_source(spec, INPUTS, "calibration"), INPUTS, 2, "calibration"))
        assert tracemalloc.get_traced_memory()[1] < MEMORY_LIMIT
        return out
    finally:
        tracemalloc.stop()


def _read_or_error(folder: Path, spec: DataSpec, *names: str):
    try:
        return _read(spec)
    except DataError as exc:
        _one_line(exc, *names, "calibration")
        return None


@SETTINGS
@given(st.sampled_from(["npy", "npz"]).flatmap(lambda kind: st.tuples(st.just(kind), st.data())))
@example(("npy", None))
@example(("npz", None))
def test_array_files_give_samples_or_their_error(kind_data):
    kind, data = kind_data
    valid = _npy_bytes(X) if kind == "npy" else _npz_bytes(input=X, labels=LABELS)
    raw = valid if data is None else _mutate(valid, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{kind}"
        path.write_bytes(raw)
        got = _read_or_error(Path(tmp), DataSpec(path=path), f"d.{kind}")
    if raw == valid:
        assert got is not None and np.array_equal(np.concatenate([b.feeds["input"] for b in got]), X)
        if kind == "npz":
            assert np.concatenate([b.labels for b in got]).tolist() == LABELS.tolist()


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (10**12, 3, 8, 8), }",  # far more than the file holds
    "{'descr': '|O', 'fortran_order': False, 'shape': (3, 3, 8, 8), }",  # objects: would need pickle
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 3, 8, 8), }",
    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3, 3, 8, 8), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': 'x', }",
])
@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_array_headers_that_lie(header, kind, tmp_path):
    body = X.tobytes()
    h = header.encode().ljust(118) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body
    if kind == "npz":
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("input.npy", npy)
        npy = buf.getvalue()
    (tmp_path / f"d.{kind}").write_bytes(npy)
    with pytest.raises(DataError) as info:
        _read(DataSpec(path=tmp_path / f"d.{kind}"))
    _one_line(info.value, f"d.{kind}")


CSV_LABEL = st.one_of(st.integers(-3, 5).map(str), st.floats(-2, 5, allow_nan=False).map(str), YAMLISH,
                      st.just("9" * 30), st.just("\u0663"), st.just("\u00b2"))  # huge, Arabic-Indic 3, superscript 2


@SETTINGS
@given(st.sampled_from(["png", "csv"]), st.data())
@example("png", None)
def test_image_folders_give_samples_or_their_error(part, data):
    png = _png_bytes(12, 10)
    labels = ["1", "0"]
    if data is not None and part == "png":
        png = _mutate(png, data.draw)
    elif data is not None:
        labels = [data.draw(CSV_LABEL), data.draw(CSV_LABEL)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "a.png").write_bytes(png)
        (folder / "b.png").write_bytes(_png_bytes(10, 12))
        with open(folder / "labels.csv", "w", newline="") as f:  # each label exactly one field, quoted if need be
            csv.writer(f).writerows([("file", "class_index"), ("a.png", labels[0]), ("b.png", labels[1])])
        spec = DataSpec(path=folder, preprocess={"resize": 8, "crop": 8})
        got = _read_or_error(folder, spec, "a.png", "labels.csv")
    if got is not None:
        assert all(re.fullmatch(r"[0-9]+", lb.strip()) for lb in labels), labels  # fractional, negative: refused
        assert got[0].labels.tolist() == [int(lb) for lb in labels]


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (2**31 - 1, 2), (30_000, 30_000)])
def test_a_tiny_file_declaring_a_huge_image(w, h, tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_declaring(w, h))
    with pytest.raises(DataError) as info:
        _read(DataSpec(path=tmp_path, preprocess={"resize": 8, "crop": 8}))
    _one_line(info.value, "bomb.png")


@pytest.mark.parametrize("labels", [np.array([0.5, 1.0, 2.0]), np.array([0, -1, 2])])
def test_npz_labels_must_be_class_indices(labels, tmp_path):
    np.savez(tmp_path / "d.npz", input=X, labels=labels)
    with pytest.raises(DataError) as info:
        _read(DataSpec(path=tmp_path / "d.npz"))
    _one_line(info.value, "d.npz")


def test_a_pickled_npy_is_not_run(tmp_path):
    np.save(tmp_path / "d.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as info:
        _read(DataSpec(path=tmp_path / "d.npy"))
    _one_line(info.value, "d.npy")


@SETTINGS
@given(st.lists(st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                        min_size=1, max_size=20).map(str.strip).filter(bool), min_size=1, max_size=4, unique=True),
       st.lists(FINITE_BITS, min_size=4, max_size=4))
@example(["[bold]x[/bold]", ":smile:", "a[1]", "conv:out:"], [0x3C010A14] * 4)
def test_cache_show_prints_names_and_hex_literally(names, bits):
    from contextlib import redirect_stdout

    from trtq.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.cache"
        path.write_text("TRT-8601-EntropyCalibration2\n" + "".join(f"{n}: {b:08x}\n" for n, b in zip(names, bits)))
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["cache", "show", str(path)]) == 0
    lines = buf.getvalue().splitlines()[1:]
    assert [ln.rpartition(": scale ")[0] for ln in lines] == names
    assert [ln.rpartition("(")[2].rstrip(")") for ln in lines] == [f"{b:08x}" for b in bits[:len(names)]]


SWEEP_VALUES = st.lists(st.one_of(st.integers(), st.text(max_size=300), st.lists(st.integers(), max_size=50),
                                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=5)), min_size=1, max_size=12)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["calibrator.method", "calibration.batch_size", "calibration.path",
                                        "calibrator.options.x", "evaluation.top_k"]), SWEEP_VALUES, min_size=1, max_size=4))
@example({"calibrator.options.x": [list(range(100))] * 10, "calibration.batch_size": list(range(12)),
          "evaluation.top_k": list(range(12))})
def test_sweeps_expand_or_give_their_error(sweep):
    from trtq.runs.sweep import MAX_POINTS, MAX_SLUG, expand

    try:
        jobs = expand({"name": "s", "model": "m.onnx", "calibration": {"path": "d"}, "sweep": sweep}, Path("sweep.yaml"))
    except JobError as exc:
        _one_line(exc, "sweep.yaml")
        return
    assert len(jobs) <= MAX_POINTS
    assert all(len(name) <= 1 + len(sweep) * (MAX_SLUG + 1) for name, _ in jobs)


@pytest.mark.parametrize("label", ["9" * 30, "\u0663", "\u00b2", "1.0", "-1", " ", "0x1"])
def test_labels_csv_class_index_must_be_plain_digits(label, tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes(12, 10))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "class_index"), ("a.png", label)])
    with pytest.raises(DataError) as info:
        _read(DataSpec(path=tmp_path, preprocess={"resize": 8, "crop": 8}))
    _one_line(info.value, "labels.csv:2")
