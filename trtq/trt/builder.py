"""Building a ``.plan`` with TensorRT's Python API (10.x and 11.x).

Explicit mode (both versions): the Q/DQ model is parsed into a strongly typed network, so every
precision comes from the graph — INT8 where Q/DQ pairs are, FP32 elsewhere, FP16 where trtq cast
excluded layers to FP16. Implicit mode (10.x only, :mod:`trtq.trt.implicit`): the FP32 model with
the INT8 builder flag and one of trtq's calibrator classes.

Everything TensorRT-specific is in this module, :mod:`.implicit`, :mod:`.runner` and
:mod:`.calibrators`; the names they use are checked against TensorRT's published bindings by
``tests/test_trt_api_surface.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import write_atomic
from ..errors import BackendError, JobError


def version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as ``10.16.1.11``."""
    parts = [int(p) for p in re.findall(r"\d+", str(version))[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def major_version(trt) -> int:
    return version_tuple(trt.__version__)[0]


def make_logger(trt):
    """A TensorRT logger that keeps warnings and errors (for one-line error messages) and
    prints errors to stderr."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((getattr(severity, "name", str(severity)), str(msg)))

        def last_error(self) -> str:
            errors = [m for s, m in self.messages if "ERROR" in s]
            return errors[-1] if errors else (self.messages[-1][1] if self.messages else "no message from TensorRT")

    return Logger()


@dataclass
class Profile:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass
class BuildOptions:
    """What the job's ``tensorrt:`` section asks of the builder."""

    mode: str = "explicit"
    workspace_mb: int | None = None
    optimization_level: int = 3
    timing_cache: Path | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    dla_core: int | None = None


def resolve_profiles(shapes: dict[str, tuple[int, ...]], profiles: dict[str, Profile],
                     batch_sizes: list[int]) -> dict[str, Profile]:
    """A min/opt/max profile for every input with a dynamic (-1) dimension: the job's, or, when
    only the batch dimension is dynamic, min 1 / opt the first batch size / max the largest
    batch size the job uses. Pure function (tested on CPU)."""
    out: dict[str, Profile] = {}
    for name, shape in shapes.items():
        if name in profiles:
            p = profiles[name]
            for kind in ("min", "opt", "max"):
                dims = getattr(p, kind)
                if len(dims) != len(shape) or any(s not in (-1, d) for s, d in zip(shape, dims)):
                    raise JobError(f"tensorrt.profiles.{name}.{kind}: {list(dims)} does not fit the input's shape "
                                   f"{list(shape)} (-1 = dynamic)")
            if not all(a <= b <= c for a, b, c in zip(p.min, p.opt, p.max)):
                raise JobError(f"tensorrt.profiles.{name}: need min <= opt <= max in every dimension")
            out[name] = p
            continue
        if -1 not in shape:
            continue
        if -1 in shape[1:]:
            raise JobError(f"tensorrt.profiles.{name}: input '{name}' has dynamic dimensions {list(shape)} beyond the "
                           "batch; give min/opt/max shapes for it")
        rest = tuple(shape[1:])
        out[name] = Profile((1, *rest), (batch_sizes[0], *rest), (max(batch_sizes), *rest))
    unknown = sorted(set(profiles) - set(shapes))
    if unknown:
        raise JobError(f"tensorrt.profiles.{unknown[0]}: the model has no input of that name "
                       f"(inputs: {', '.join(shapes)})")
    return out


def has_strong_typing(trt) -> bool:
    """Strongly typed networks exist from TensorRT 9.0 on (read from ``tensorrt.__version__``)."""
    return version_tuple(trt.__version__) >= (9, 0)


def network_flags(trt, strongly_typed: bool) -> int:
    """``create_network`` flags: 8.6 its explicit-batch flag; 9.x–10.x ``STRONGLY_TYPED`` when
    asked; 11.x none (every network is strongly typed; the flag is deprecated and ignored)."""
    if not has_strong_typing(trt):  # 8.6
        from . import legacy

        return legacy.network_flags(trt)
    if strongly_typed and major_version(trt) < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _parse(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    flags = network_flags(trt, strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"{onnx_path}: TensorRT's ONNX parser rejected the model: "
                           f"{(errors[0] if errors else logger.last_error()).splitlines()[0]}")
    return network, parser


def _configure(trt, builder, network, options: BuildOptions, batch_sizes: list[int]):
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    config.builder_optimization_level = options.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = None
    if options.timing_cache is not None:
        data = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes[tensor.name] = tuple(tensor.shape)
    profiles = resolve_profiles(shapes, options.profiles, batch_sizes)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    return config, shapes, profiles


def build_serialized(trt, onnx_path: Path, options: BuildOptions, batch_sizes: list[int], implicit=None):
    """Build the engine; returns (plan bytes, facts for the report). ``implicit`` is an
    :class:`~trtq.trt.implicit.ImplicitSetup` for 10.x implicit mode, else None."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, strongly_typed=implicit is None)
    config, shapes, profiles = _configure(trt, builder, network, options, batch_sizes)
    if implicit is not None:
        implicit.apply(trt, builder, network, config, shapes)
    elif not has_strong_typing(trt):
        from . import legacy

        legacy.enable_int8(trt, config)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if implicit is not None:
            implicit.feeder.close()
    if implicit is not None:
        implicit.feeder.raise_pending()
        implicit.check_cache_taken()
    if serialized is None:
        raise BackendError(f"TensorRT could not build the engine: {logger.last_error().splitlines()[0]}")
    if options.timing_cache is not None:
        _write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    facts = {"tensorrt_version": str(trt.__version__), "mode": options.mode,
             "strongly_typed": implicit is None and has_strong_typing(trt),
             "inputs": {k: list(v) for k, v in shapes.items()},
             "profiles": {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for k, p in profiles.items()},
             "optimization_level": options.optimization_level, "workspace_mb": options.workspace_mb,
             "dla_core": options.dla_core, "warnings": [m for _, m in logger.messages][-20:]}
    del parser
    return bytes(serialized), facts


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
