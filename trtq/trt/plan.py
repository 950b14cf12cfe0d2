"""``.plan`` files and what they were built for.

A serialized TensorRT engine only runs with the TensorRT version that built it and on GPUs of
the same compute capability (unless built hardware-compatible). So every ``engine.plan`` gets
a sidecar ``engine.plan.json`` recording TensorRT's version, the GPU and its compute
capability, the CUDA driver and the plan's SHA-256; loading checks them first and names what
does not match instead of letting TensorRT fail with a deserialization error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..artifacts import write_atomic_group
from ..errors import BackendError

META_SUFFIX = ".json"


def meta_path(plan: Path) -> Path:
    return plan.with_name(plan.name + META_SUFFIX)


def write_plan(plan: Path, data: bytes | memoryview, meta: dict) -> dict:
    """Write ``plan`` and its metadata atomically (temporary files, then rename); returns the
    metadata as written (with ``sha256`` and ``bytes``)."""
    data = bytes(data)
    meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_atomic_group([(plan, data), (meta_path(plan), json.dumps(meta, indent=2, sort_keys=True) + "\n")],
                       fsync=True)
    return meta


def read_meta(plan: Path) -> dict:
    path = meta_path(plan)
    if not plan.is_file():
        raise BackendError(f"{plan}: engine not found; build it with 'trtq build' (quantization.target: tensorrt)")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(f"{path}: missing; trtq records what a .plan was built for beside it — rebuild the engine "
                           "with 'trtq build'") from None
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path}: not valid JSON ({exc.msg}); rebuild the engine with 'trtq build'") from None


def check_compatible(plan: Path, meta: dict, tensorrt_version: str, gpu: dict) -> bytes:
    """The plan's bytes, or a one-line error when ``plan`` (described by ``meta``) cannot run here."""
    built = meta.get("tensorrt_version", "?")
    if built != tensorrt_version:
        raise BackendError(f"{plan}: built with TensorRT {built}, this machine has TensorRT {tensorrt_version}; "
                           "a .plan only loads with the TensorRT version that built it — rebuild it here with 'trtq build'")
    want_cc = meta.get("gpu", {}).get("compute_capability")
    have_cc = gpu.get("compute_capability")
    if not meta.get("hardware_compatible") and want_cc != have_cc:
        raise BackendError(f"{plan}: built for {meta.get('gpu', {}).get('name', '?')} (compute capability {want_cc}), "
                           f"this GPU is {gpu.get('name', '?')} (compute capability {have_cc}); rebuild it on this GPU")
    data = plan.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise BackendError(f"{plan}: the file does not match the SHA-256 recorded in {meta_path(plan).name} "
                           "(changed or truncated); rebuild it with 'trtq build'")
    return data
