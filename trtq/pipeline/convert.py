"""Conversions between TensorRT calibration caches and Q/DQ models (``trtq cache …``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..artifacts import write_atomic
from ..calib import cache as trt_cache
from ..calib.ranges import Range
from ..errors import CacheError
from ..model.load import load_model
from ..model.prepare import prepare
from ..quant.qdq import insert_qdq

HINT = "choose another path with -o"


def read_cache(path: Path) -> trt_cache.CalibrationCache:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CacheError(f"{path}: cannot read the cache ({exc.strerror}); check the path") from None
    return trt_cache.loads(data, str(path))


def cache_to_qdq(model_path: Path, cache_path: Path, out: Path) -> dict:
    """Write the TensorRT-flavour Q/DQ model of ``model_path`` with the ranges of a cache."""
    cache = read_cache(cache_path)
    prepared = prepare(model_path)
    plan = prepared.plan
    missing = [t for t in plan.activations if t not in cache.scales]
    if missing:
        raise CacheError(f"{cache_path}: no scale for {len(missing)} of the {len(plan.activations)} tensors "
                         f"{model_path} quantizes (first: {', '.join(missing[:5])}); was the cache made for this model?")
    for t in plan.activations:
        scale = cache.scales[t]
        if not (np.isfinite(scale) and scale >= 0):
            raise CacheError(f"{cache_path}: tensor '{t}' has scale {scale!r} ({trt_cache.encode_scale(scale)}); "
                             "a scale must be finite and positive — regenerate the cache")
    # TensorRT writes a zero range as a bare "0": such a tensor gets amax 1 (zeros quantize exactly), and is named
    zeros = [t for t in plan.activations if cache.scales[t] == 0]
    ranges = {t: Range.symmetric(cache.scales[t] * 127.0) for t in plan.activations}
    qdq = insert_qdq(prepared.model, plan, ranges, "tensorrt")
    write_atomic(out, lambda p: onnx.save(qdq, str(p)), hint=HINT)
    return {"tensors": len(plan.activations), "unused_cache_entries": len(set(cache.scales) - set(plan.activations)),
            "zero_scales": zeros}


def qdq_to_cache(qdq_path: Path, out: Path, version: str, algorithm: str) -> dict:
    """Write the TensorRT cache of a Q/DQ model: one line per activation QuantizeLinear."""
    model = load_model(qdq_path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue  # weights stored FP32 behind Q→DQ are not activations: caches don't hold them
        scale = inits.get(node.input[1])
        if scale is None or scale.size != 1:
            raise CacheError(f"{qdq_path}: QuantizeLinear '{node.name}' has no per-tensor constant scale; "
                             "a TensorRT cache holds one scale per tensor")
        if len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None or np.any(zp != 0):
                raise CacheError(f"{qdq_path}: QuantizeLinear '{node.name}' has a non-zero zero point; "
                                 "TensorRT caches are symmetric (use the TensorRT-flavour model.int8.onnx)")
        scales[node.input[0]] = float(scale.reshape(()))
    if not scales:
        raise CacheError(f"{qdq_path}: no activation QuantizeLinear found; give a Q/DQ model such as model.int8.onnx")
    text = trt_cache.dumps(trt_cache.CalibrationCache(version, algorithm, dict(sorted(scales.items()))))
    write_atomic(out, text, hint=HINT)
    return {"tensors": len(scales)}
