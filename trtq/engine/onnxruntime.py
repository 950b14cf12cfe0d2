"""The ONNX Runtime INT8 engine: the ONNX Runtime-flavour Q/DQ model optimized offline for this
CPU (so loading it does no re-optimization), and the count of kernels that really run INT8."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import onnx

from ..artifacts import write_atomic
from ..errors import BackendError, NoSpaceError
from ..runtime.onnxruntime import Runner, session

# weighted ops (Conv, ConvTranspose, Gemm, MatMul with a constant input) as ONNX Runtime runs them
INT8_WEIGHTED = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QLinearConvTranspose"}
FP32_WEIGHTED = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NchwcConv"}
# other INT8 kernels (not weighted ops)
INT8_OTHER = {"QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
              "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
              "QLinearAveragePool", "QLinearMaxPool"}
INT8_KERNELS = INT8_WEIGHTED | INT8_OTHER


LAYOUT_OPS = ("ReorderInput", "ReorderOutput")  # what ORT's NCHWc transformer inserts around FP32 convolutions


def _stable_names(model: onnx.ModelProto) -> bool:
    """ONNX Runtime names the layout nodes it inserts (``ReorderOutput``, ``ReorderOutput_token_6``)
    from a counter that earlier sessions of the same process advance, so one build would write
    other names after other work (measured: an extra session before the engine build renamed
    them). Number them by position instead; True when a name changed."""
    counts: dict[str, int] = {}
    changed = False
    for node in model.graph.node:
        if node.op_type in LAYOUT_OPS and node.domain == "com.microsoft.nchwc":
            k = counts.get(node.op_type, 0)
            counts[node.op_type] = k + 1
            name = f"{node.op_type}_{k}"
            changed |= name != node.name
            node.name = name
    return changed


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
    engine = onnx.load(str(path), load_external_data=False)
    if _stable_names(engine):
        write_atomic(path, lambda tmp: onnx.save(engine, str(tmp)))
    return count_kernels(engine)


def _weighted_fp32(node: onnx.NodeProto, constants: set[str]) -> bool:
    """An FP32 kernel of a weighted op: a MatMul counts only with a constant (or dequantized) operand."""
    if node.op_type not in FP32_WEIGHTED:
        return False
    if node.op_type in ("MatMul", "FusedMatMul"):
        return any(i in constants for i in node.input[:2])
    return True


# where an INT8 matrix product's two operands sit: (A, B) input indices
INT8_MATMUL_OPERANDS = {"QLinearMatMul": (0, 3), "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1),
                        "DynamicQuantizeMatMul": (0, 1)}


def _int8_weighted(node: onnx.NodeProto, constants: set[str]) -> bool:
    """An INT8 kernel of a weighted op: an INT8 MatMul counts only with a constant operand (one
    between two activations, attention's Q·Kᵀ, is another INT8 kernel)."""
    if node.op_type not in INT8_WEIGHTED:
        return False
    pair = INT8_MATMUL_OPERANDS.get(node.op_type)
    return pair is None or any(i < len(node.input) and node.input[i] in constants for i in pair)


def count_kernels(optimized: onnx.ModelProto) -> dict:
    """Weighted ops that run as INT8 kernels, those that still run in FP32 (the first ten named),
    and the other INT8 kernels (Add, pooling, activation × activation MatMul, …) separately."""
    graph = optimized.graph
    ops = Counter(n.op_type for n in graph.node)
    inits = {i.name for i in graph.initializer}
    constants = inits | {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                         for o in n.output}
    fp32 = [n.name or n.op_type for n in graph.node if _weighted_fp32(n, constants)]
    int8 = sum(_int8_weighted(n, constants) for n in graph.node)
    return {
        "int8_weighted": int8,
        "fp32_weighted": len(fp32),
        "int8_other": sum(v for k, v in ops.items() if k in INT8_KERNELS) - int8,
        "fp32_weighted_nodes": fp32[:10],
        "ops": dict(sorted(ops.items())),
    }


def load_engine(path: Path, threads: int | None = None) -> Runner:
    """An engine is already optimized: load it without running the optimizers again."""
    return Runner(session(path, threads=threads, optimize=False))


def weight_bits(setting: str | int, cpu: dict) -> int:
    """``quantization.weight_bits``: ``auto`` is 8 on CPUs with VNNI, 7 elsewhere (u8×s8 pairs of
    7-bit weights cannot saturate the int16 intermediate of the AVX2 kernels)."""
    return setting if setting != "auto" else (8 if cpu["vnni"] else 7)
