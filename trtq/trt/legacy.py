"""TensorRT 8.6 (before strong typing existed): explicit batch networks, and the INT8 builder
flag that explicit (Q/DQ) quantization needs there. Used only when ``tensorrt.__version__`` is
below 9.0. No 8.6 bindings wheel is published on PyPI, so these names are
checked against the 10.x bindings (where they still exist), not 8.6's.
"""

from __future__ import annotations


def network_flags(trt) -> int:
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def enable_int8(trt, config) -> None:
    """Q/DQ layers are honoured only with the INT8 flag before strong typing (8.x)."""
    config.set_flag(trt.BuilderFlag.INT8)
