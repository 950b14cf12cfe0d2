"""TensorRT backend entry point. ``tensorrt`` is imported lazily, here only, so trtq imports
and runs on machines without it."""

from __future__ import annotations

import importlib

from ..errors import BackendError

INSTALL_HINT = ("install the GPU extra on a machine with an NVIDIA GPU (pip install 'trtq[tensorrt]'), "
                "or set quantization.target: onnxruntime to build the CPU engine")


def require_tensorrt():
    """Return the ``tensorrt`` module or raise a one-line error saying what to do."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise BackendError(f"quantization.target: tensorrt needs TensorRT, which is not installed; {INSTALL_HINT}") from None


def check_available() -> None:
    trt = require_tensorrt()
    raise BackendError(
        f"quantization.target: tensorrt: TensorRT {getattr(trt, '__version__', '?')} is installed, but trtq's .plan "
        "builder is not part of this release; build model.int8.onnx from a target: onnxruntime job with "
        "'trtexec --onnx=model.int8.onnx --stronglyTyped', or set quantization.target: onnxruntime")
