"""Fingerprints of what each stage's outputs depend on, for incremental ``trtq run``.

* build (calibration → Q/DQ → cache → engine): the model's bytes, the calibration data (each
  file's name, size and modification time), every job key except ``name``, ``output`` and
  ``evaluation``, the CPU facts an ONNX Runtime engine is built for, and the versions of trtq,
  onnxruntime, onnx, numpy and TensorRT;
* evaluation: the build's fingerprint, the evaluation section and its data, the same versions.

A build folder records both in ``fingerprint.json`` once the stage has finished; a re-run skips
a stage whose recorded fingerprint equals the current one. Data read by a Python loader cannot
be fingerprinted unless the loader says what it reads (a ``fingerprint`` attribute); otherwise
such jobs always run.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..artifacts import FINGERPRINT, file_sha256, write_atomic
from ..job import DataSpec, Job

FILE = FINGERPRINT


def versions() -> dict:
    out = {"trtq": __version__}
    for dist in ("onnxruntime", "onnx", "numpy", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def data_listing(spec: DataSpec) -> list | None:
    """Name, size and mtime of every file the data section reads. A loader counts only if it
    says what it reads: a ``fingerprint`` attribute on the loader function, called with no
    arguments, returning a string (see ``examples/mnist_idx.py``); else None (always rebuilt)."""
    if spec.loader is not None:
        from ..plugins import import_callable

        fn = import_callable(spec.loader, "loader")
        if not callable(getattr(fn, "fingerprint", None)):
            return None
        module_file = spec.loader.rpartition(":")[0]
        code = file_sha256(Path(module_file)) if module_file.endswith(".py") else module_file
        return [spec.loader, code, str(fn.fingerprint())]
    path = Path(spec.path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if spec.labels is not None:
        files.append(Path(spec.labels))
    listing = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        listing.append([str(f), st.st_size, st.st_mtime_ns])
    return listing


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _relevant_keys(job: Job) -> dict:
    """The job keys a build's outputs depend on: not name/output/evaluation, and not the keys
    the chosen method or target ignores (so sweeping one doesn't rebuild the others)."""
    keys = job.model_dump(mode="json", by_alias=True, exclude={"name", "output", "evaluation"})
    cal = keys["calibrator"]
    if cal.get("class") is not None or cal["method"] != "percentile":
        cal.pop("percentile")
    if cal.get("class") is None:
        cal.pop("options")
    if job.quantization.target == "onnxruntime":
        keys.pop("tensorrt")
        keys["quantization"].pop("keep_precision")
        cal.pop("source")
    else:
        keys["quantization"].pop("weight_bits")
    return keys


def build_fingerprint(job: Job, cpu: dict) -> str | None:
    cal = data_listing(job.calibration) if job.calibration is not None else []  # none: a pre-quantized model
    if cal is None or not Path(job.model).is_file():
        return None
    keys = _relevant_keys(job)
    return _digest({"model": file_sha256(Path(job.model)), "calibration_data": cal, "job": keys,
                    "cpu": cpu if job.quantization.target == "onnxruntime" else None, "versions": versions()})


def evaluation_fingerprint(job: Job, build_fp: str | None) -> str | None:
    if job.evaluation is None or build_fp is None:
        return None
    data = data_listing(job.evaluation)
    if data is None:
        return None
    return _digest({"build": build_fp, "evaluation": job.evaluation.model_dump(mode="json", by_alias=True),
                    "evaluation_data": data, "versions": versions()})


def read(folder: Path) -> dict:
    try:
        return json.loads((folder / FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write(folder: Path, doc: dict) -> None:
    write_atomic(folder / FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")
