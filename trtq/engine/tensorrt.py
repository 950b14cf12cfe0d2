"""TensorRT backend: from a build's Q/DQ model (or FP32 model + calibrator) to ``engine.plan``,
and the runners the evaluator uses. ``tensorrt`` and the CUDA binding are imported lazily, here
only, so trtq imports and runs on machines without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import onnx

from ..artifacts import CACHE, FP32_TMP, PLAN, QDQ_MODEL, TRT_CACHE, write_atomic
from ..calib.cache import cache_text
from ..calib.ranges import Range
from ..errors import BackendError, JobError
from ..job import CalibratorSpec, TensorRTSpec
from ..model.load import InputSpec

INSTALL_HINT = ("install the GPU extra for the driver's CUDA on a machine with an NVIDIA GPU (pip install "
                "'trtq[tensorrt-cu12]', or 'trtq[tensorrt-cu13]' with a CUDA 13 / R580+ driver), or set "
                "quantization.target: onnxruntime to build the CPU engine")


def find_tensorrt():
    """``(tensorrt module, None)``, or ``(None, why)`` where TensorRT does not import here."""
    try:
        return importlib.import_module("tensorrt"), None
    except ImportError:
        return None, "TensorRT is not installed on this machine"
    except OSError as exc:  # the bindings import but TensorRT's libraries do not load
        return None, f"TensorRT's libraries do not load ({str(exc).splitlines()[0]})"


def require_tensorrt(need: str = "quantization.target: tensorrt"):
    """Return the ``tensorrt`` module or raise a one-line error saying what to do (``need``:
    what asked for TensorRT, as the user wrote it)."""
    trt, why = find_tensorrt()
    if trt is None:
        raise BackendError(f"{need} needs TensorRT here: {why}; {INSTALL_HINT}")
    return trt


DEFAULT_CACHE_VERSION = "8601"  # calibrator.cache_version's default where no TensorRT is installed


def installed_version() -> str | None:
    """``tensorrt.__version__`` where TensorRT imports on this machine, else None."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except (ImportError, OSError):
        return None


def cache_version(calibrator: CalibratorSpec, installed: str | None) -> tuple[str, str]:
    """The cache header's version number and where it came from: the job's
    ``calibrator.cache_version``, else the installed TensorRT's, else trtq's default (8601)."""
    if "cache_version" in calibrator.model_fields_set:
        return calibrator.cache_version, "calibrator.cache_version"
    if installed is not None:
        return version_number(installed), f"TensorRT {installed} installed here"
    return DEFAULT_CACHE_VERSION, ("trtq's default; no TensorRT here, and TensorRT ignores a cache whose header "
                                   "is not its own version: set calibrator.cache_version")


def trtexec_command(spec: TensorRTSpec, inputs: list[InputSpec], batch_sizes: list[int], model: Path) -> str:
    """The ``trtexec`` line that builds the same engine from the build folder's files: explicit
    mode from ``model.int8.onnx`` (strongly typed), implicit mode from the FP32 ``model`` with
    ``calibration.cache``; the job's profiles, workspace, optimization level, timing cache, DLA."""
    from ..trt.builder import resolve_profiles

    shapes = {i.name: tuple(-1 if d is None else d for d in i.shape) for i in inputs}
    profiles = resolve_profiles(shapes, _options(spec).profiles, batch_sizes)
    args = ["trtexec"]
    if spec.mode == "explicit":
        args += [f"--onnx={QDQ_MODEL}", "--stronglyTyped"]
    else:
        args += [f"--onnx={shlex.quote(str(model))}", "--int8", f"--calib={CACHE}"]
    for kind in ("min", "opt", "max"):
        if profiles:
            args.append(f"--{kind}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, getattr(p, kind)))}"
                                                       for name, p in profiles.items()))
    if spec.workspace_mb:
        args.append(f"--memPoolSize=workspace:{spec.workspace_mb}M")
    args.append(f"--builderOptimizationLevel={spec.optimization_level}")
    if spec.timing_cache is not None:
        args.append(f"--timingCacheFile={shlex.quote(str(spec.timing_cache))}")
    if spec.dla_core is not None:
        args += [f"--useDLACore={spec.dla_core}", "--allowGPUFallback"]
    return " ".join(args + [f"--saveEngine={PLAN}"])


def not_built(spec: TensorRTSpec, inputs: list[InputSpec], batch_sizes: list[int], model: Path, build_command: str,
              reason: str) -> dict:
    """The report's ``engine`` section of a build that did everything but the plan: no TensorRT here."""
    return {"path": None, "kind": "tensorrt", "built": False, "mode": spec.mode,
            "reason": f"engine not built here: {reason}",
            "build_on_gpu": {"trtq": build_command, "trtexec": trtexec_command(spec, inputs, batch_sizes, model)}}


def version_number(version: str) -> str:
    """TensorRT's ``NV_TENSORRT_VERSION`` for a version string, as written in cache headers:
    major·1000 + minor·100 + patch before 10.0 (8.6.1 → 8601), major·10000 + minor·100 + patch
    from 10.0 on (NvInferVersion.h's ``NV_TENSORRT_VERSION_INT``; 10.3.0 → 100300)."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not a TensorRT version: {version!r}")
    major, minor, patch = map(int, m.groups())
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def check_target(spec: TensorRTSpec, trt) -> None:
    """Refuse what this TensorRT cannot do with the job's ``tensorrt`` section, before any work."""
    from ..trt.builder import version_tuple

    version = version_tuple(trt.__version__)
    if version < (8, 6):
        raise BackendError(f"TensorRT {trt.__version__}: trtq builds engines with TensorRT 8.6 or newer "
                           "(10.x or 11.x recommended); upgrade TensorRT")
    if spec.mode == "implicit" and version[0] >= 11:
        raise JobError(f"tensorrt.mode: implicit needs TensorRT 10.x or older; TensorRT {trt.__version__} removed "
                       "implicit INT8 (calibrators, BuilderFlag.INT8) — use mode: explicit (the Q/DQ model)")
    if spec.dla_core is not None and (10, 8) <= version < (11, 4):
        raise JobError(f"tensorrt.dla_core: TensorRT {trt.__version__} has no DLA support (10.7 was the last 10.x "
                       "release with DLA; 11.0-11.3 have none); remove dla_core or use TensorRT 10.7 or 11.4+")


def _options(t: TensorRTSpec):
    from ..trt.builder import BuildOptions, Profile

    return BuildOptions(mode=t.mode, workspace_mb=t.workspace_mb, optimization_level=t.optimization_level,
                        timing_cache=t.timing_cache, dla_core=t.dla_core,
                        profiles={k: Profile(tuple(p.min), tuple(p.opt), tuple(p.max)) for k, p in t.profiles.items()})


def calibration_specs(spec_trt: TensorRTSpec, batch_size: int, inputs: list[InputSpec]):
    """The shape and dtype each input is calibrated at (implicit mode): ``tensorrt.calibration_shapes``,
    else ``batch_size`` (the job's calibration batch size) and the input's static dimensions."""
    from ..trt.feeder import FeedSpec

    specs = []
    for spec in inputs:
        given = spec_trt.calibration_shapes.get(spec.name)
        if given is not None:
            shape = tuple(given)
            if len(shape) != len(spec.shape) or any(s is not None and s != d for s, d in zip(spec.shape, shape)):
                raise JobError(f"tensorrt.calibration_shapes.{spec.name}: {list(shape)} does not fit the input's shape "
                               f"{[s if s is not None else -1 for s in spec.shape]}")
        else:
            if any(s is None for s in spec.shape[1:]):
                raise JobError(f"tensorrt.calibration_shapes.{spec.name}: input '{spec.name}' has dynamic dimensions "
                               "beyond the batch; give the shape to calibrate at")
            shape = (batch_size, *spec.shape[1:])
        specs.append(FeedSpec(spec.name, shape, np.dtype(spec.dtype)))
    return specs


def build_plan(spec: TensorRTSpec, calibrator: CalibratorSpec, batch_sizes: list[int], stage: Path,
               model: onnx.ModelProto, ranges: dict[str, Range], inputs: list[InputSpec], calibration_batches,
               excluded: list[str], progress) -> dict:
    """Build ``stage/engine.plan`` (+ ``engine.plan.json``) from ``stage/model.int8.onnx`` (explicit
    mode) or ``model`` with trtq's calibrator (implicit); the report's ``engine`` section.
    ``batch_sizes``: every batch the engine must run (the first is calibration's);
    ``calibration_batches()`` yields feeds for TensorRT's own calibration."""
    from .. import __version__
    from ..trt.calibrators import CACHE_ALGORITHM
    from ..trt.builder import build_serialized
    from ..trt.cuda import DeviceAllocator, cuda_runtime
    from ..trt.feeder import CalibrationFeeder, full_batches
    from ..trt.implicit import ImplicitSetup
    from ..trt.plan import write_plan

    trt = require_tensorrt()
    rt = cuda_runtime()
    gpu = rt.device()
    options = _options(spec)
    implicit = None
    onnx_path = stage / QDQ_MODEL
    dropped: list[int] = []
    tmp_fp32 = None
    if spec.mode == "implicit":
        tmp_fp32 = stage / FP32_TMP
        write_atomic(tmp_fp32, lambda tmp: onnx.save(model, str(tmp)))
        onnx_path = tmp_fp32
        cal = calibrator
        kind = "minmax" if cal.method == "minmax" else "entropy"
        algorithm = CACHE_ALGORITHM[kind]
        version = cache_version(cal, str(trt.__version__))[0]
        specs = calibration_specs(spec, batch_sizes[0], inputs)
        if cal.source == "trtq":
            cache = cache_text(ranges, version, algorithm)
            feeder = CalibrationFeeder([], specs, DeviceAllocator(rt), cache_in=cache.encode(), cache_only=True)
        else:
            feeder = CalibrationFeeder(full_batches(calibration_batches(), specs[0].shape[0], dropped), specs,
                                       DeviceAllocator(rt), cache_out=stage / TRT_CACHE)
        implicit = ImplicitSetup(feeder, kind, {s.name: s.shape for s in specs}, tuple(excluded),
                                 f"TRT-{version}-{algorithm}", frozenset(ranges))
    try:
        with progress.task(f"building TensorRT engine ({spec.mode})", None):
            data, facts = build_serialized(trt, onnx_path, options, batch_sizes, implicit)
    finally:
        if tmp_fp32 is not None:
            tmp_fp32.unlink(missing_ok=True)
    meta = write_plan(stage / PLAN, data, {"tensorrt_version": facts["tensorrt_version"], "gpu": gpu,
                                           "mode": facts["mode"], "trtq": __version__, "hardware_compatible": False})
    engine = {"path": PLAN, "kind": "tensorrt", **facts, "gpu": gpu, "sha256": meta["sha256"], "bytes": meta["bytes"]}
    if implicit is not None:
        engine["calibration"] = {"source": calibrator.source, "cache_header": implicit.cache_header,
                                 "batches": implicit.feeder.batches_served, "dropped_samples": sum(dropped)}
        if calibrator.source == "trtq":
            missing = implicit.without_scale
            engine["calibration"]["tensors_without_scale"] = {"count": len(missing), "first": missing[:10]}
            if missing:
                progress.note(f"TensorRT network tensors without a scale in trtq's cache: {len(missing)} (first: "
                              f"{', '.join(missing[:3])}); they run in a non-INT8 kernel")
    return engine


def load_runner(plan: Path):
    """An :class:`~trtq.trt.runner.EngineRunner` for ``plan`` after checking it fits this machine."""
    from ..trt.cuda import cuda_runtime
    from ..trt.plan import check_compatible, read_meta
    from ..trt.runner import EngineRunner

    trt = require_tensorrt()
    meta = read_meta(plan)
    rt = cuda_runtime()
    data = check_compatible(plan, meta, str(trt.__version__), rt.device())
    return EngineRunner(trt, data, rt)


def inspect_plan(plan: Path, inputs: list[InputSpec], engine: dict) -> dict:
    """The inspector summary of a plan, after one run on zeros at each input's optimization
    profile 'opt' shape (or its static shape), so dynamic shapes are resolved."""
    from ..trt.inspect import summarize

    shapes = {i.name: engine["profiles"].get(i.name, {}).get("opt") or engine["inputs"][i.name] for i in inputs}
    with load_runner(plan) as runner:
        runner({i.name: np.zeros(shapes[i.name], dtype=i.dtype) for i in inputs})
        return summarize(runner.inspect())


def fp32_runner(model: onnx.ModelProto, stage: Path, spec: TensorRTSpec, batch_sizes: list[int]):
    """A strongly typed FP32 engine of the original model (the latency baseline), not kept."""
    from ..trt.builder import build_serialized
    from ..trt.cuda import cuda_runtime
    from ..trt.runner import EngineRunner

    trt = require_tensorrt()
    path = stage / FP32_TMP
    write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
    try:
        options = _options(spec)
        options.timing_cache = None
        data, _ = build_serialized(trt, path, options, batch_sizes)
    finally:
        path.unlink(missing_ok=True)
    return EngineRunner(trt, data, cuda_runtime())


def _no_gpu_reason(error: str) -> str:
    """Why there is no GPU, in the words a user needs: most machines without one have no NVIDIA
    driver at all, which CUDA reports as an 'insufficient' driver."""
    if not Path("/proc/driver/nvidia/version").exists() and not list(Path("/dev").glob("nvidia[0-9]*")):
        return "no NVIDIA driver or GPU found on this machine (no /proc/driver/nvidia, no /dev/nvidia*)"
    return error


def doctor() -> dict:
    """What this machine has for trtq's targets, and what that allows."""
    import onnxruntime as ort

    facts: dict = {"onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}
    try:
        trt = require_tensorrt("target: tensorrt")
        facts["tensorrt"] = str(trt.__version__)
    except BackendError as exc:
        facts["tensorrt"] = None
        facts["tensorrt_error"] = str(exc)
    try:
        from ..trt.cuda import cuda_runtime

        rt = cuda_runtime()
        facts["cuda_binding"] = rt.binding
        facts["gpu"] = rt.device()
    except BackendError as exc:
        facts.setdefault("cuda_binding", None)
        facts["gpu"] = None
        facts["gpu_error"] = _no_gpu_reason(str(exc))
    allows = ["target: onnxruntime (INT8 engine on this CPU)"]
    if facts.get("tensorrt") and facts.get("gpu"):
        major = int(facts["tensorrt"].split(".")[0])
        allows.append("target: tensorrt, mode: explicit (strongly typed Q/DQ .plan)")
        if major < 11:
            allows.append("target: tensorrt, mode: implicit (INT8 flag + trtq's calibrators)")
    facts["allows"] = allows
    return facts
