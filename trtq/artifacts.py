"""The files a build writes — every name in one place — and the two ways trtq writes them:

* :func:`staged_output`: a whole build folder, staged in a hidden folder next to the final one
  and moved into place only when everything succeeded (a failure or Ctrl-C removes it);
* :func:`write_atomic`: one file (or a few that belong together) through temporary files and
  ``os.replace``, so a reader never sees half of it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from .errors import NoSpaceError, OutputError

# -- a build folder ------------------------------------------------------------------------------
QDQ_MODEL = "model.int8.onnx"  # the TensorRT-flavour Q/DQ model
ORT_ENGINE = "engine.ort.onnx"  # target onnxruntime: the CPU engine
CACHE = "calibration.cache"  # TensorRT's calibration cache format, from trtq's ranges
RANGES = "ranges.json"
MEANS = "channel_means.npz"  # per-channel input means behind bias correction
ADAROUND = "adaround.npz"  # learned int8 weights and scales per weight (quantization.adaround)
EQUALIZATION = "equalization.npz"  # per-channel activation scales of the equalized tensors (when any)
PLAN = "engine.plan"  # target tensorrt: the serialized engine ...
PLAN_META = PLAN + ".json"  # ... and what it was built with and for
TRT_CACHE = "calibration.tensorrt.cache"  # the cache TensorRT itself wrote (implicit mode, source: tensorrt)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LATENCY_PNG = "latency.png"
PER_LAYER_PNG = "per_layer_sqnr.png"
SENSITIVITY_PNG = "sensitivity.png"
TARGET_PNG = "accuracy_target.png"
FP32_TMP = ".model.fp32.onnx"  # the FP32 model handed to TensorRT's parser, removed after use
FINGERPRINT = "fingerprint.json"  # trtq run: what the build and the evaluation were made from

# -- an output root ------------------------------------------------------------------------------
STATS_FOLDER = ".trtq-stats"  # stored calibration statistics, shared by the jobs of one root
SUMMARY_JSON = "summary.json"  # trtq run
SUMMARY_MD = "summary.md"

Payload = bytes | str | Callable[[Path], None]


def _tmp_name(path: Path) -> Path:
    # keep the suffix: writers such as np.savez append their own otherwise
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_atomic_group(items: Iterable[tuple[Path, Payload]], fsync: bool = False, hint: str = "") -> None:
    """Write each ``(path, payload)`` to a temporary file beside it, then rename them all into
    place. A payload is bytes, text, or ``write(tmp_path)``. On failure no temporary file is
    left and the error names the path (``hint``: what the user can do)."""
    items = [(Path(p), data) for p, data in items]
    tmps: list[Path] = []
    path = items[0][0] if items else Path()
    try:
        for path, data in items:
            tmp = _tmp_name(path)
            tmps.append(tmp)
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
                    if fsync:
                        f.flush()
                        os.fsync(f.fileno())
        for (path, _), tmp in zip(items, tmps):
            os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(path.parent, path.name, *([hint] if hint else [])) from None
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})" + (f"; {hint}" if hint else "")) from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, payload: Payload, fsync: bool = False, hint: str = "") -> None:
    """One file, atomically (see :func:`write_atomic_group`)."""
    write_atomic_group([(path, payload)], fsync, hint)


class Terminated(BaseException):
    """SIGTERM (``kill``, systemd, Kubernetes, CI time-outs), raised in the main thread so that a
    staged build folder is removed on the way out, as on Ctrl-C."""


_TERMINATED = threading.Event()  # this process got SIGTERM: a worker starts no further build


def raise_on_sigterm(signum=None, frame=None):
    """The SIGTERM handler; also a process pool's initializer (``signum`` None: install it)."""
    if signum is None:
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        return
    _TERMINATED.set()
    raise Terminated


def check_terminated() -> None:
    """Raise :class:`Terminated` if this process got SIGTERM before (a pool worker's next task)."""
    if _TERMINATED.is_set():
        raise Terminated


@contextmanager
def sigterm_raises():
    """SIGTERM raises :class:`Terminated` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def staged_output(root: Path, name: str):
    """Yield a staging folder; on success it replaces ``root/name``."""
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
        # mkdtemp makes it 0700, and the mode survives the rename: give the build folder the mode
        # any new folder gets, so the account that serves the model can read it
        staging.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(f"output: cannot write to {root} ({exc.strerror}); choose another folder with "
                          "--out DIR or the job's 'output:' key") from None
    committed = False
    try:
        try:
            yield staging
        except NoSpaceError as exc:  # name the build folder, not the staging folder that is removed
            if Path(exc.folder) != staging:
                raise
            raise NoSpaceError(final, exc.name, exc.hint) from None
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.replace(final, old / name)
        os.replace(staging, final)
        committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if not committed:
            shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (model hashes in reports, stores and fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
