"""What ran in INT8: a summary of TensorRT's engine-inspector JSON
(``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``, engine built with
``ProfilingVerbosity.DETAILED``).

The inspector lists the engine's layers (after fusion) with their input and output tensors,
each described by a ``Format/Datatype`` string such as "Thirty-two wide channel vectorized row
major Int8 format." or "Row major linear FP32". A compute layer whose inputs are Int8 runs in
INT8; one whose inputs are FP32/FP16 fell back; ``Reformat`` layers are layout/precision
conversions TensorRT inserted (each costs a memory pass, so they are worth listing).
"""

from __future__ import annotations

import json
import re

# layer types that move or relabel data rather than compute
NON_COMPUTE = {"Reformat", "NoOp", "Shuffle", "Constant", "Identity", "Cast", "Quantize", "Dequantize"}

_PRECISIONS = [("INT8", re.compile(r"\bint8\b", re.I)), ("FP8", re.compile(r"\bfp8\b", re.I)),
               ("FP16", re.compile(r"\b(fp16|half)\b", re.I)), ("BF16", re.compile(r"\bbf16\b", re.I)),
               ("FP32", re.compile(r"\b(fp32|float)\b", re.I)), ("INT32", re.compile(r"\bint32\b", re.I)),
               ("INT64", re.compile(r"\bint64\b", re.I)), ("BOOL", re.compile(r"\bbool\b", re.I))]


def tensor_precision(fmt: str) -> str | None:
    """'Thirty-two wide channel vectorized row major Int8 format.' → 'INT8'; None if unknown
    (e.g. 'N/A due to dynamic shapes')."""
    for name, pattern in _PRECISIONS:
        if pattern.search(fmt or ""):
            return name
    return None


def summarize(info: str | dict) -> dict:
    """Count INT8 compute layers, list those that fell back to a higher precision and the
    reformat layers. ``info``: the inspector's JSON text or its parsed form."""
    doc = json.loads(info) if isinstance(info, str) else info
    layers = doc.get("Layers", [])
    if layers and isinstance(layers[0], str):
        return {"detailed": False, "layers": len(layers), "note": "engine built without ProfilingVerbosity.DETAILED; "
                "layer precisions unknown"}
    int8, fallback, reformats, unknown = [], [], [], []
    for layer in layers:
        name, kind = layer.get("Name", "?"), layer.get("LayerType", "?")
        ins = [tensor_precision(t.get("Format/Datatype", "")) for t in layer.get("Inputs", [])]
        outs = [tensor_precision(t.get("Format/Datatype", "")) for t in layer.get("Outputs", [])]
        if kind == "Reformat":
            reformats.append({"name": name, "from": ins[0] if ins else None, "to": outs[0] if outs else None})
            continue
        if kind in NON_COMPUTE:
            continue
        known = [p for p in ins if p is not None]
        if not known:
            unknown.append(name)
        elif "INT8" in known:
            int8.append(name)
        else:
            fallback.append({"name": name, "type": kind, "precision": known[0],
                             "output": next((p for p in outs if p), None)})
    compute = len(int8) + len(fallback) + len(unknown)
    return {"detailed": True, "layers": len(layers), "compute_layers": compute, "int8_layers": len(int8),
            "fallback_layers": fallback, "reformat_layers": reformats, "unknown_precision": unknown,
            "int8_fraction": len(int8) / compute if compute else 0.0}
