"""ONNX Runtime on CPU: sessions and runners for FP32/INT8 inference (calibration, evaluation,
benchmarks), and the facts of this CPU that INT8 kernels depend on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import BackendError

def session(model: onnx.ModelProto | str | Path, threads: int | None = None, optimize: bool = True,
            optimized_path: Path | None = None, spin: bool = True) -> ort.InferenceSession:
    """``spin=False`` stops ONNX Runtime's threads busy-waiting between runs: for calibration,
    where trtq's folding threads need the cores as soon as a batch has run."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not threads:  # 'trtq run' gives each parallel build worker its share of the cores
        threads = int(os.environ.get("TRTQ_THREADS", "0")) or None
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:300]
        raise BackendError(f"onnxruntime cannot load the model: {first}") from None


class RunError(BackendError):
    """ONNX Runtime failed while running the model on the data it was given."""


def run_failed(exc: BaseException, feeds: dict[str, np.ndarray]) -> RunError:
    """A one-line error from ONNX Runtime's exception: the inputs' shapes and ORT's first line."""
    shapes = ", ".join(f"'{k}' {'x'.join(map(str, v.shape)) or 'scalar'} {v.dtype}" for k, v in feeds.items())
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else exc.__class__.__name__
    return RunError(f"onnxruntime failed running the model on {shapes}: {first}")


class Runner:
    """Runs a session; ``run(feeds, names)`` returns the named outputs (default: all)."""

    def __init__(self, sess: ort.InferenceSession):
        self.sess = sess
        self.input_names = [i.name for i in sess.get_inputs()]
        self.output_names = [o.name for o in sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        try:
            return self.sess.run(names or self.output_names, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise run_failed(exc, feeds) from None


class BoundRunner:
    """Runs a session through IOBinding: outputs stay in ONNX Runtime's buffers and are viewed,
    not copied, as numpy arrays; the buffers are reused while the batch shape stays the same,
    so dozens of large intermediate tensors per batch cost no fresh allocations. For
    calibration: the arrays are only valid until the next call."""

    def __init__(self, sess: ort.InferenceSession):
        self.sess = sess
        self.output_names = [o.name for o in sess.get_outputs()]
        self._key = None
        self._io = None

    def __call__(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        names = list(names or self.output_names)
        key = (tuple(names), tuple((k, v.shape) for k, v in sorted(feeds.items())))
        if key != self._key:
            self._io = self.sess.io_binding()
            for n in names:
                self._io.bind_output(n, "cpu")
            self._key, first = key, True
        else:
            first = False
        io = self._io
        try:
            for k, v in feeds.items():
                io.bind_cpu_input(k, np.ascontiguousarray(v))
            self.sess.run_with_iobinding(io)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            self._key = None  # the binding may be half-made
            raise run_failed(exc, feeds) from None
        outs = io.get_outputs()
        if first:  # keep these buffers bound for the next batches of the same shape
            for n, v in zip(names, outs):
                io.bind_ortvalue_output(n, v)
        return [v.numpy() for v in outs]


def cpu_info() -> dict:
    flags: set[str] = set()
    model_name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model_name in ("", platform.machine()):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": model_name,
        "machine": platform.machine(),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "onnxruntime": ort.__version__,
    }
