"""The ONNX Runtime INT8 engine: the ONNX Runtime-flavour Q/DQ model optimized offline for this
CPU (so loading it does no re-optimization), and the count of kernels that really run INT8."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import onnx

from ..errors import BackendError, NoSpaceError
from ..runtime.onnxruntime import Runner, session

INT8_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                "DynamicQuantizeMatMul", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool"}
FP32_WEIGHTED = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NchwcConv"}


def build_engine(qdq_model: onnx.ModelProto, path: Path, threads: int | None = None) -> dict:
    """Optimize the ONNX Runtime Q/DQ model for this CPU, save it at ``path``; count kernels."""
    try:
        session(qdq_model, threads=threads, optimized_path=path)
    except BackendError:
        # ONNX Runtime writes the file itself and only says "Protobuf serialization failed"
        free = shutil.disk_usage(path.parent).free
        path.unlink(missing_ok=True)
        if free < 2 * qdq_model.ByteSize() + (1 << 16):
            raise NoSpaceError(path.parent, path.name) from None
        raise
    return count_kernels(onnx.load(str(path), load_external_data=False))


def count_kernels(optimized: onnx.ModelProto) -> dict:
    ops = Counter(n.op_type for n in optimized.graph.node)
    return {
        "int8_weighted": sum(v for k, v in ops.items() if k in INT8_KERNELS),
        "fp32_weighted": sum(v for k, v in ops.items() if k in FP32_WEIGHTED),
        "ops": dict(sorted(ops.items())),
    }


def load_engine(path: Path, threads: int | None = None) -> Runner:
    """An engine is already optimized: load it without running the optimizers again."""
    return Runner(session(path, threads=threads, optimize=False))


def weight_bits(setting: str | int, cpu: dict) -> int:
    """``quantization.weight_bits``: ``auto`` is 8 on CPUs with VNNI, 7 elsewhere (u8×s8 pairs of
    7-bit weights cannot saturate the int16 intermediate of the AVX2 kernels)."""
    return setting if setting != "auto" else (8 if cpu["vnni"] else 7)
