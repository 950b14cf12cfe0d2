"""Stored calibration statistics, so a rebuild with the same model, data and tensors reuses
them instead of running the model again — and a change of method only re-derives ranges.

Statistics live in ``<output root>/.trtq-stats/<key>.npz``. The key hashes what determines
them: the model bytes, the tensors collected, the data section (minus ``batch_size``,
``memory_budget_mb`` and ``shards``, which cannot change the statistics) and, for file sources, each file's
name, size and modification time. Python loaders are never reused: trtq cannot see what they
read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..artifacts import STATS_FOLDER, write_atomic
from .stats import TensorStats

STATS_VERSION = 4  # 2: per-channel sums for bias correction; 3: data fingerprint over per-sample digests;
# 4: the key covers how inputs are fed
FOLDER = STATS_FOLDER


def stats_key(model_sha: str, tensors: list[str], spec_dump: dict, files: list[Path],
              inputs: list | None = None) -> str | None:
    """``inputs``: how the model's inputs are fed (shapes after ``input_shapes``, batch axes,
    constants) — they change the collected values as much as the data does."""
    if spec_dump.get("loader"):
        return None
    h = hashlib.sha256()
    spec = {k: v for k, v in spec_dump.items() if k not in ("batch_size", "memory_budget_mb", "shards")}
    listing = []
    for f in files:
        st = f.stat()
        listing.append([f.name, st.st_size, st.st_mtime_ns])
    h.update(json.dumps({"v": STATS_VERSION, "model": model_sha, "tensors": sorted(tensors), "data": spec,
                         "files": listing, "inputs": inputs}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def save(root: Path, key: str, stats: dict[str, TensorStats], info: dict) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"__info__": np.array(json.dumps(info, sort_keys=True))}
    names = sorted(stats)
    arrays["__names__"] = np.array(json.dumps(names))
    for i, name in enumerate(names):
        arrays.update(stats[name].to_arrays(f"t{i}"))
    final = path(root, key)
    write_atomic(final, lambda tmp: np.savez(tmp, **arrays))
    return final


def path(root: Path, key: str) -> Path:
    return root / FOLDER / f"{key}.npz"


def load(root: Path, key: str) -> tuple[dict[str, TensorStats], dict] | None:
    file = path(root, key)
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            info = json.loads(str(z["__info__"]))
            names = json.loads(str(z["__names__"]))
            return {n: TensorStats.from_arrays(z, f"t{i}") for i, n in enumerate(names)}, info
    except (OSError, KeyError, ValueError):
        return None  # a damaged store entry is ignored and rebuilt
