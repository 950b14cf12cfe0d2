"""``trtq bench MODEL``: trtexec-style latency of one model alone, on synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..model.load import input_specs, load_model
from ..runtime import onnxruntime as ort_runtime
from .latency import interleaved, summarize


def _inputs(model, batch: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in input_specs(model):
        dims = list(shapes.get(spec.name, spec.shape))
        if spec.fixed_batch is not None and spec.fixed_batch != batch:
            raise ModelError(f"--batch {batch}: input '{spec.name}' has a fixed batch of {spec.fixed_batch}")
        dims[0] = batch
        if any(d is None for d in dims[1:]):
            raise ModelError(f"input '{spec.name}' has dynamic dimensions {spec.shape}; give --shape {spec.name}:1x3x224x224")
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(dims, dtype=spec.dtype)
    return feeds


def bench(path: Path, batches: list[int], warmup: int, iterations: int, duration_s: float | None,
          threads: int | None, shapes: dict[str, tuple[int, ...]]) -> dict:
    if path.suffix in (".plan", ".engine", ".trt"):
        raise ModelError(f"{path}: trtq bench times ONNX models on ONNX Runtime; time a TensorRT engine with "
                         f"trtexec --loadEngine={path}")
    model = load_model(path)
    runner = ort_runtime.Runner(ort_runtime.session(path, threads=threads))
    out = {}
    for bs in batches:
        feeds = _inputs(model, bs, shapes)
        times = interleaved({"model": lambda: runner(feeds)}, warmup, iterations, duration_s)  # noqa: B023
        out[str(bs)] = summarize(times["model"], bs)
    return {"model": str(path), "threads": threads, "machine": ort_runtime.cpu_info(), "by_batch": out}
