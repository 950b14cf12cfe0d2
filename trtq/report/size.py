"""Model size for the report: bytes of the FP32 model, of ``model.int8.onnx`` and of the engine,
and of the weights alone, by what each initializer is for.

INT8 weights are stored as int8 initializers behind a DequantizeLinear, so the weights shrink
by about 4×; FP32 biases, layers kept out of INT8 and other float constants do not, and the
report says which of them keeps a file from shrinking 4×.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BIASED = {"Conv", "ConvTranspose", "Gemm"}
NEAR_4X = 3.8  # below this weight ratio, say what stayed float
ROLES = ("int8_weights", "weight_scales", "float_weights", "int32_biases", "float_biases", "activation_scales", "other")


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's values (from its dims and type; the data is not decoded)."""
    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def _role(uses: list[tuple[onnx.NodeProto, int]], inits: dict[str, onnx.TensorProto], dq_of: dict[str, str]) -> str:
    for node, i in uses:
        if node.op_type == "DequantizeLinear" and i == 0:
            dtype = inits[node.input[0]].data_type
            return {onnx.TensorProto.INT8: "int8_weights", onnx.TensorProto.UINT8: "int8_weights",
                    onnx.TensorProto.INT32: "int32_biases"}.get(dtype, "float_weights")
        if node.op_type == "QuantizeLinear" and i == 0:
            return "float_weights"  # an FP32 weight behind Q→DQ
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and i > 0:
            return dq_of.get(node.input[0], "activation_scales")
        if node.op_type in WEIGHTED and i == 1:
            return "float_weights"
        if node.op_type in BIASED and i == 2:
            return "float_biases"
    return "other"


def initializer_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of ``model``'s initializers by role (:data:`ROLES`): int8 weights and their scales
    and zero points, float weights (FP32/FP16: not quantized), int32 and float biases, activation
    scales and zero points, and everything else."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                uses.setdefault(name, []).append((node, i))
    dq_scale = {onnx.TensorProto.INT32: "int32_biases"}
    dq_of = {name: dq_scale.get(t.data_type, "weight_scales") for name, t in inits.items()
             if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and i == 0 for n, i in uses.get(name, []))}
    out = dict.fromkeys(ROLES, 0)
    for name, t in inits.items():
        out[_role(uses.get(name, []), inits, dq_of)] += tensor_bytes(t)
    return out


def _file_bytes(path: Path | None) -> int | None:
    return path.stat().st_size if path is not None and path.is_file() else None


def model_size(fp32_path: Path | None, fp32: onnx.ModelProto, int8_path: Path, int8: onnx.ModelProto,
               engine_path: Path | None) -> dict:
    """The report's ``size`` section. ``fp32_path`` None: the FP32 model is not a file (a
    pre-quantized model's FP32 graph), its serialized size is given."""
    a, b = initializer_bytes(fp32), initializer_bytes(int8)
    w32 = a["float_weights"]
    w8 = b["int8_weights"] + b["weight_scales"] + b["float_weights"]
    total32, total8 = sum(a.values()), sum(b.values())
    fp32_bytes = _file_bytes(fp32_path) if fp32_path is not None else fp32.ByteSize()
    doc = {"fp32_model_bytes": fp32_bytes, "int8_model_bytes": _file_bytes(int8_path),
           "engine_bytes": _file_bytes(engine_path),
           "weights": {"fp32_bytes": w32, "int8_bytes": w8, "ratio": w32 / w8 if w8 else None},
           "initializers": {"fp32": a, "int8": b, "ratio": total32 / total8 if total8 else None}}
    doc["notes"] = size_notes(doc)
    return doc


def megabytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


def size_notes(doc: dict) -> list[str]:
    """Why the weights or the whole model did not shrink about 4×."""
    b = doc["initializers"]["int8"]
    notes = []
    if doc["weights"]["ratio"] is not None and doc["weights"]["ratio"] < NEAR_4X:
        why = [(b["float_weights"], "stay float (layers kept out of INT8)"),
               (b["weight_scales"], "are per-channel scales and zero points")]
        notes.append(f"weights {doc['weights']['ratio']:.2f}× smaller, not 4×: of {megabytes(doc['weights']['int8_bytes'])}, "
                     + ", ".join(f"{megabytes(n)} {what}" for n, what in sorted(why, reverse=True) if n))
    ratio = doc["initializers"]["ratio"]
    if ratio is not None and ratio < NEAR_4X:
        kept = [(b["float_biases"], "FP32 biases"), (b["int32_biases"], "int32 biases"),
                (b["float_weights"], "float weights of layers kept out of INT8"),
                (b["other"], "other float constants"),
                (b["weight_scales"] + b["activation_scales"], "scales and zero points")]
        parts = ", ".join(f"{what} {megabytes(n)}" for n, what in sorted(kept, reverse=True) if n)
        notes.append(f"all constants {ratio:.2f}× smaller, not 4×: besides {megabytes(b['int8_weights'])} of int8 "
                     f"weights, model.int8.onnx holds {parts}")
    return notes
