"""A Python data loader (``loader: "file.py:function"`` in a job) for the MNIST test set in
its original IDX format: yields ``{"Input3": float32 [B,1,28,28] raw 0..255, "labels": [B]}``.

The folder is ``$TRTQ_MNIST_DIR`` or ``../shared/data/mnist`` beside the repository.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _folder() -> Path:
    return Path(os.environ.get("TRTQ_MNIST_DIR", DEFAULT))


def test_set(batch: int = 500):
    folder = _folder()
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    for i in range(0, len(images), batch):
        yield {"Input3": images[i:i + batch, None].astype(np.float32), "labels": labels[i:i + batch]}


def _fingerprint() -> str:
    """What the loader reads (for incremental 'trtq run'): the IDX files' names, sizes, mtimes."""
    parts = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        st = (_folder() / name).stat()
        parts.append(f"{_folder() / name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


test_set.fingerprint = _fingerprint
