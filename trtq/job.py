"""The build job: a YAML file validated into a :class:`Job`.

Relative paths written in the job file are resolved against the job file's folder; relative
paths given on the command line with ``--set`` are resolved against the current directory.
Every problem becomes a one-line :class:`~trtq.errors.JobError` naming the file and key.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import shlex
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import JobError

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocess(_Strict):
    """Image preprocessing: pixel values 0–255 → ``(pixel * scale - mean) / std``."""

    resize: int | None = Field(None, gt=0, description="resize so the shorter side has this length")
    resize_to: tuple[int, int] | None = Field(None, description="resize to exactly [height, width]")
    letterbox: tuple[int, int] | None = Field(None, description="fit inside [height, width] keeping the aspect "
                                              "ratio, centered, the rest filled with 'fill' (YOLO-style)")
    fill: float = Field(114, description="letterbox: the pixel value (0-255) of the padding")
    resize_height: int | None = Field(None, gt=0, description="resize to this height keeping the aspect ratio "
                                      "(text-line recognisers)")
    pad_width: int | None = Field(None, gt=0, description="with resize_height: right-pad to this width with "
                                  "pad_value (after normalization); wider images are resized to it")
    pad_value: float = 0.0
    multiple_of: int | None = Field(None, gt=0, description="after resizing, round each side to a multiple of this "
                                    "(detectors with stride-32 feature maps)")
    interpolation: Interpolation = "bilinear"
    crop: int | tuple[int, int] | None = Field(None, description="center crop: size or [height, width]")
    scale: float = 1.0
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    color: Literal["RGB", "BGR", "L"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _one_geometry(self):
        given = [k for k in ("resize", "resize_to", "letterbox", "resize_height") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of resize, resize_to, letterbox, resize_height (got {', '.join(given)})")
        if self.pad_width is not None and self.resize_height is None:
            raise ValueError("pad_width goes with resize_height")
        for key in ("resize_to", "letterbox"):
            if getattr(self, key) is not None and min(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be [height, width] of positive sizes")
        return self

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v):
        if any(s == 0 for s in (v if isinstance(v, tuple) else (v,))):
            raise ValueError("std must not be 0")
        return v


class DataSpec(_Strict):
    """Where samples come from: exactly one of ``path`` or ``loader``."""

    path: Path | None = None
    loader: str | None = Field(None, description="'module:function' or 'file.py:function' yielding batches")
    input: str | None = Field(None, description="model input fed by a single-array source (default: the only input)")
    labels: Literal["none"] | Path | None = Field(None, description="labels CSV (file,class_index); default: "
                                                  "<path>/labels.csv if present; 'none': no labels")
    preprocess: Preprocess = Preprocess()
    batch_size: int = Field(8, ge=1)
    skip: int = Field(0, ge=0, description="samples to skip at the start")
    max_samples: int | None = Field(None, ge=1)
    histogram_stride: int = Field(1, ge=1, le=64, description="histogram every n-th value of each sample "
                                  "(min/max stay exact); 1 = every value")
    memory_budget_mb: int = Field(1024, ge=16, description="most memory one batch of exposed activations may take; "
                                  "past it, calibration runs in several passes over the data")
    shards: int = Field(1, ge=1, le=1024, description="calibration: split the samples into this many contiguous "
                        "shards, collect each separately (in parallel under 'trtq run --ray') and merge")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.loader is None):
            raise ValueError("give exactly one of 'path' or 'loader'")
        if self.loader is not None and ":" not in self.loader:
            raise ValueError("loader must look like 'module:function' or 'file.py:function'")
        return self


class CalibratorSpec(_Strict):
    method: Literal["entropy", "minmax", "percentile", "mse", "auto"] = Field(
        "percentile", description="auto: every built-in method from the one collection, the best on the task metric "
        "(of evaluation's selection split) kept")
    percentile: float = Field(99.99, gt=0, le=100)
    class_: str | None = Field(None, alias="class", description="user calibrator 'file.py:Class' or 'package.module:Class'")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the user calibrator class")
    cache_version: str = Field("8601", pattern=r"^[0-9]+$", description="TensorRT version number written in the cache "
                               "header (unset: the installed TensorRT's, else 8601)")
    cache_algorithm: Literal[
        "EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration"
    ] = "EntropyCalibration2"
    source: Literal["trtq", "tensorrt"] = Field("trtq", description="TensorRT 10.x implicit mode: 'trtq' hands TensorRT "
                                               "trtq's ranges through the cache; 'tensorrt' lets TensorRT calibrate "
                                               "(entropy or minmax) on the streamed batches")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _class_or_method(self):
        if self.class_ is not None and "method" in self.model_fields_set:
            raise ValueError("give either 'method' or 'class', not both")
        if self.class_ is not None and ":" not in self.class_:
            raise ValueError("class must look like 'file.py:Class' or 'package.module:Class'")
        if self.source == "tensorrt" and (self.class_ is not None or self.method not in ("entropy", "minmax")):
            raise ValueError("source: tensorrt runs TensorRT's own calibrator, which is entropy or minmax; "
                             "set method to one of those, or source: trtq")
        return self


class AccuracyTarget(_Strict):
    """``quantization.accuracy_target``: keep layers out of INT8 until the metric meets it."""

    metric: str = Field(description="a task metric (cer, identical_rate, mask_iou, map50, top1, top1_agreement, "
                        "sqnr_db, …; 'output:metric' for one output) or a custom metric's key")
    max_drop: float | None = Field(None, ge=0, description="at most this much worse than FP32's value (for metrics "
                                   "against FP32, FP32's own: 1.0 for rates, 0 for cer)")
    minimum: float | None = Field(None, description="at least this value (larger-is-better metrics)")
    maximum: float | None = Field(None, description="at most this value (smaller-is-better metrics, e.g. cer)")
    selection_samples: int = Field(32, ge=1, description="evaluation samples the search scores candidates on")
    confirmation_samples: int = Field(32, ge=0, description="the next samples, disjoint, that confirm the choice")
    max_steps: int = Field(24, ge=1, description="most candidate engines the search builds")

    @model_validator(mode="after")
    def _one_bound(self):
        given = [k for k in ("max_drop", "minimum", "maximum") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of max_drop, minimum, maximum (got {', '.join(given) or 'none'})")
        return self


class QuantizationSpec(_Strict):
    target: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    weight_method: Literal["max", "mse"] = Field("max", description="per-channel weight amax: max |w|, or the MSE-optimal clip")
    weights: Literal["per_channel", "per_tensor"] = Field("per_channel", description="weight scales: one per output "
                                                          "channel (TensorRT's and ONNX Runtime's default), or one "
                                                          "per weight tensor (loses most on depthwise convolutions)")
    weight_bits: Literal["auto", 7, 8] = Field("auto", description="ONNX Runtime engine: 7-bit weights avoid int16 "
                                              "saturation on CPUs without VNNI; auto picks by the CPU")
    bias_correction: bool = Field(True, description="fold the mean output shift of weight quantization into each bias")
    equalize_channels: bool = Field(True, description="widen activation channels narrower than 1/8 of their tensor's "
                                    "widest in front of depthwise convolutions, where the graph absorbs it exactly")
    convert_asymmetric: bool = Field(False, description="pre-quantized models for TensorRT: give activations with a "
                                     "zero point or uint8 the symmetric int8 scale covering the same [min, max] "
                                     "(a coarser step: up to 6 dB more noise on such a tensor) instead of refusing them")
    cross_layer_equalization: bool = Field(False, description="even out the per-channel weight ranges of Conv pairs "
                                           "joined through ReLU/identity (Nagel et al. 2019; FP32-identical); pairs "
                                           "through ReLU6 are left, and the report says how many")
    adaround: bool = Field(False, description="learn each weight's rounding (up or down) against its layer's FP32 "
                           "output on calibration inputs (AdaRound, Nagel et al. 2020) instead of rounding to nearest")
    adaround_samples: int = Field(1024, ge=16, le=65536, description="AdaRound: input rows (positions) sampled per "
                                  "layer from the calibration data; bounds its memory")
    adaround_iterations: int = Field(300, ge=10, le=20000, description="AdaRound: optimisation steps per layer")
    exclude_ops: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    accuracy_target: AccuracyTarget | None = Field(None, description="evaluate on a selection split and keep the "
                                                   "most sensitive layers in higher precision until this is met")
    keep_precision: Literal["fp32", "fp16"] = Field("fp16", description="precision of the layers kept out of INT8 in "
                                                    "the TensorRT model (cast in the graph: strong typing); fp16 as "
                                                    "ModelOpt; no loss measured on EfficientNet-Lite0")

    @model_validator(mode="after")
    def _adaround_per_channel(self):
        if self.adaround and self.weights == "per_tensor":
            raise ValueError("adaround learns the rounding under per-channel weight scales; set weights: per_channel "
                             "or adaround: false")
        return self


class ProfileSpec(_Strict):
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class TensorRTSpec(_Strict):
    """Builder options for ``quantization.target: tensorrt``."""

    mode: Literal["explicit", "implicit"] = Field("explicit", description="explicit: the Q/DQ model, strongly typed "
                                                  "(10.x and 11.x); implicit: FP32 model + INT8 flag + calibrator (10.x)")
    workspace_mb: int | None = Field(None, ge=1, description="workspace memory pool limit (default: TensorRT's)")
    optimization_level: int = Field(3, ge=0, le=5, description="builder optimization level")
    timing_cache: Path | None = Field(None, description="timing cache file, read if present and updated after the build")
    profiles: dict[str, ProfileSpec] = Field(default_factory=dict, description="min/opt/max shape per dynamic input")
    calibration_shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict, description="implicit mode: the shape "
                                                           "each input is calibrated at (default: calibration.batch_size)")
    dla_core: int | None = Field(None, ge=0, description="run on this DLA core with GPU fallback (default: GPU only)")
    gpu_type: str | None = Field(None, description="'trtq run --ray': build on a node with this GPU type "
                                 "(Ray accelerator_type, e.g. A100, L4); a .plan runs only on the GPU type it was built on")


class LatencySpec(_Strict):
    batch_sizes: tuple[int, ...] = (1,)
    warmup: int = Field(10, ge=0)
    iterations: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1, description="intra-op threads (default: onnxruntime's choice)")
    duration_s: float | None = Field(None, gt=0, description="time each model at least this long (after the iterations)")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v):
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be a non-empty list of positive integers")
        return v


Task = Literal["auto", "classification", "detection", "dense", "sequence", "generic"]


class DetectionOptions(_Strict):
    """How a detector's output becomes boxes (``evaluation.task: detection``)."""

    layout: Literal["auto", "channels_first", "channels_last", "nms"] = Field(
        "auto", description="channels_first [B, 4+C, N] (YOLOv8), channels_last [B, N, 4+C], nms [B, N, 6] rows "
        "x1 y1 x2 y2 score class (already suppressed); auto: the shorter of the last two axes holds 4+C")
    box_format: Literal["cxcywh", "xyxy"] = "cxcywh"
    score_threshold: float = Field(0.25, ge=0)
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS")
    match_iou: float = Field(0.5, gt=0, le=1, description="an INT8 box matches a reference box at this IoU (mAP@0.5)")
    max_detections: int = Field(300, ge=1)


class SensitivitySpec(_Strict):
    """``evaluation.sensitivity``: each quantized layer's measured effect on the task metric."""

    enabled: bool = Field(False, description="measure it in every build with an evaluation (an accuracy_target "
                          "measures it whenever it needs it)")
    samples: int = Field(16, ge=1, description="evaluation samples each candidate engine is scored on")
    time_budget_s: float = Field(600, gt=0, description="stop measuring layers after this long (the rest unranked)")
    metric: str | None = Field(None, description="the metric to rank by (default: accuracy_target's, else the "
                               "first output's task metric)")


class EvaluationSpec(DataSpec):
    @field_validator("shards")
    @classmethod
    def _no_shards(cls, v):
        if v != 1:
            raise ValueError("shards applies to calibration only")
        return v

    latency: LatencySpec = LatencySpec()
    top_k: int = Field(5, ge=1)
    metric: str | None = Field(None, description="custom metric 'file.py:function' or 'module:function'")
    per_layer_samples: int = Field(32, ge=0, description="samples for the per-layer error analysis; 0 skips it")
    task: Task | dict[str, Task] = Field("auto", description="what the outputs mean: one task for every output, or "
                                         "{output: task}; auto infers it from each output's shape and values")
    detection: DetectionOptions = DetectionOptions()
    dense_threshold: float = Field(0.5, description="dense maps with one channel: foreground above this value")
    ctc_blank: int = Field(0, ge=0, description="sequence outputs: the CTC blank class")
    sensitivity: SensitivitySpec = SensitivitySpec()


class InputOptions(_Strict):
    """How one model input is fed (``inputs: {name: {...}}``)."""

    batch_axis: int | None | Literal["auto"] = Field("auto", description="the input's batch axis; null: none, the "
                                                     "input is fed as it is (default: inferred, see model/inputs.py)")
    value: Any = Field(None, description="a constant fed for every sample (e.g. sr: 16000); the data then need not "
                       "hold this input")


class Job(_Strict):
    """One build job, validated: each stage takes the sections it needs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: Path
    input_shapes: dict[str, tuple[int, ...]] | None = None
    inputs: dict[str, InputOptions] = Field(default_factory=dict)
    calibration: DataSpec | None = Field(None, description="the calibration data; only a model that already holds "
                                         "Q/DQ nodes (pre-quantized) may omit it")
    calibrator: CalibratorSpec = CalibratorSpec()
    quantization: QuantizationSpec = QuantizationSpec()
    tensorrt: TensorRTSpec = TensorRTSpec()
    evaluation: EvaluationSpec | None = None
    output: Path = Path("engines")
    _command: str | None = PrivateAttr(None)  # the 'trtq build' line that loads this job, when read from a file

    @model_validator(mode="after")
    def _searches_need_an_evaluation(self):
        if self.evaluation is None:
            if self.quantization.accuracy_target is not None:
                raise ValueError("quantization.accuracy_target needs an evaluation section: its samples are "
                                 "what the target is measured on")
            if self.calibrator.method == "auto" and self.calibrator.class_ is None:
                raise ValueError("calibrator.method: auto picks by the task metric on evaluation samples; add an "
                                 "evaluation section or name a method")
        return self

    @property
    def build_command(self) -> str:
        """``trtq build JOB [--set …]`` as this job was loaded (a placeholder path if it was not)."""
        return self._command or f"trtq build <job file of '{self.name}'>"

    def calibrates_every_tensor(self) -> bool:
        """TensorRT's implicit INT8 fed trtq's cache: it wants a scale for every tensor of the network."""
        return (self.quantization.target == "tensorrt" and self.tensorrt.mode == "implicit"
                and self.calibrator.source == "trtq")

    def batch_sizes(self) -> list[tuple[str, int]]:
        """Every batch size the job runs the model at, with the key that sets it."""
        sizes = [("calibration.batch_size", self.calibration.batch_size)] if self.calibration is not None else []
        if self.evaluation is not None:
            sizes.append(("evaluation.batch_size", self.evaluation.batch_size))
            sizes += [("evaluation.latency.batch_sizes", b) for b in self.evaluation.latency.batch_sizes]
        return sizes


PATH_KEYS = {
    ("model",), ("output",),
    ("calibration", "path"), ("calibration", "labels"),
    ("evaluation", "path"), ("evaluation", "labels"), ("tensorrt", "timing_cache"),
}


def _resolve(value: Any, base: Path, key: str) -> Any:
    if isinstance(value, str) and "\0" in value:
        raise JobError(f"{key}: {_short(value)} holds a NUL character; give a file path")
    if isinstance(value, str) and value and value != "none" and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def _resolve_paths(data: dict, base: Path) -> None:
    for key in PATH_KEYS:
        node = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            node[key[-1]] = _resolve(node[key[-1]], base, ".".join(key))
    cal = data.get("calibrator")
    if isinstance(cal, dict) and isinstance(cal.get("class"), str):
        mod, _, cls = cal["class"].rpartition(":")
        if mod.endswith(".py"):
            cal["class"] = f"{_resolve(mod, base, 'calibrator.class')}:{cls}"
    for section in ("calibration", "evaluation"):
        sec = data.get(section)
        for key in ("loader", "metric"):
            if isinstance(sec, dict) and isinstance(sec.get(key), str):
                mod, _, fn = sec[key].rpartition(":")
                if mod.endswith(".py"):
                    sec[key] = f"{_resolve(mod, base, f'{section}.{key}')}:{fn}"


MAX_YAML_VALUES = 100_000  # a job is a few hundred values; aliases must not expand past this
MAX_YAML_DEPTH = 64
MAX_YAML_BYTES = 1 << 20  # a job file is a few KB; parsing 1 MB of YAML already takes about a second
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML was built with it


class YamlLimitError(ValueError):
    """A YAML document past what a job may hold (alias bombs, recursion, deep nesting, a key
    written twice); ``line`` (1-based) where known, ``hint`` what to do."""

    def __init__(self, message: str, line: int | None = None, hint: str = "write the values out instead"):
        super().__init__(message)
        self.line, self.hint = line, hint


def _check_keys(node: yaml.MappingNode) -> None:
    """A key written twice would silently keep its last value: refuse it, as a YAML linter would."""
    first: dict[str, int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":
            line = key.start_mark.line + 1
            if key.value in first:
                raise YamlLimitError(f"key '{_clip(key.value, 40)}' is written twice (first on line {first[key.value]})",
                                     line, "keep one of them")
            first[key.value] = line


def _expanded_size(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    """How many values ``node`` stands for once every alias is expanded (shared nodes counted
    once per use, computed once each)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise YamlLimitError("an alias refers to the collection it is in (recursive YAML)")
        return memo[key]
    if depth > MAX_YAML_DEPTH:
        raise YamlLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep")
    memo[key] = -1
    if isinstance(node, yaml.MappingNode):
        _check_keys(node)
        size = 1 + sum(_expanded_size(k, memo, depth + 1) + _expanded_size(v, memo, depth + 1) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, depth + 1) for v in node.value)
    else:
        size = 1
    memo[key] = size
    if size > MAX_YAML_VALUES:
        raise YamlLimitError(f"aliases expand to more than {MAX_YAML_VALUES} values")
    return size


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs, recursive aliases and deep nesting before
    building any value (:class:`YamlLimitError` saying which), so nothing downstream expands them."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlLimitError(f"{len(text)} characters of YAML, more than {MAX_YAML_BYTES} a job may hold")
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):  # events, not recursion: deep nesting stops here
        depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
        if depth > MAX_YAML_DEPTH:
            raise YamlLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark.line + 1)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    finally:
        loader.dispose()


DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")  # a.b.c (--set, sweep keys)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``a.b.c=value`` → (('a','b','c'), value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not DOTTED_KEY.match(key.strip()):
        raise JobError(f"--set {_clip(repr(text), 80)}: expected KEY.PATH=VALUE, e.g. --set calibration.batch_size=16")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except YamlLimitError as exc:
        raise JobError(f"--set {_clip(key, 60)}: {exc}; {exc.hint}") from None
    except (ValueError, TypeError, OverflowError):
        value = raw
    return tuple(key.strip().split(".")), value


def apply_override(data: dict, key: tuple[str, ...], value: Any, cwd: Path) -> None:
    node = data
    for i, part in enumerate(key[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise JobError(f"--set {'.'.join(key)}: {'.'.join(key[:i + 1])} is not a section")
        node = nxt
    if key in PATH_KEYS:
        value = _resolve(value, cwd, "--set " + ".".join(key))
    elif key[-1] in ("loader", "class", "metric") and isinstance(value, str) and value.rpartition(":")[0].endswith(".py"):
        mod, _, fn = value.rpartition(":")
        value = f"{_resolve(mod, cwd, '--set ' + '.'.join(key))}:{fn}"
    node[key[-1]] = value


def _fields_at(loc: tuple) -> list[str]:
    """Names allowed at the level of ``loc`` (for 'did you mean' suggestions)."""
    cls: Any = Job
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        ann = cls.model_fields[part].annotation
        if get_origin(ann) is Union or type(ann).__name__ == "UnionType":
            ann = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        cls = ann
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _first_error(err: ValidationError) -> dict:
    """The error to report: an unknown key before anything else, since a misspelled key
    (``calibraton``) also makes the key it was meant to be (``calibration``) missing."""
    errors = err.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def _clip(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (messages never echo a whole input)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value a user wrote, bounded in depth and length."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 2, limit, limit, 4, 4
    return _clip(r.repr(value), limit)


def _key_path(e: dict) -> tuple[str, ...]:
    """The dotted key of a pydantic error; pydantic names the member of a union it tried
    (``int``, ``tuple[int, int]``…) in ``loc``: those are dropped."""
    loc = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-"))
    return tuple(_clip(p, 40) for p in loc if not _is_type_tag(p))


def _format_error(source: str, err: ValidationError) -> str:
    e = _first_error(err)
    loc = _key_path(e)
    dotted = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
        return f"{source}: {dotted}: unknown key; {hint}"
    if e["type"] == "missing":
        return f"{source}: {dotted}: required key is missing; add it to the job"
    got = e.get("input")
    got_s = f" (got {_short(got)})" if not isinstance(got, dict) else ""
    # a union (crop: int | [h, w]) fails once per member: say what each member wanted
    msgs = dict.fromkeys(x["msg"].removeprefix("Value error, ") for x in err.errors()[:20] if _key_path(x) == loc)
    msg = _clip(", or ".join(msgs), 200)
    return f"{source}: {dotted}: {msg}{got_s}"


_TYPE_TAGS = {"int", "float", "str", "bool", "list", "tuple", "dict", "none", "literal", "path"}


def _is_type_tag(part: str) -> bool:
    """pydantic names the union member it tried in ``loc`` (``int``, ``tuple[int, int]``…)."""
    return "[" in part or part.lower() in _TYPE_TAGS


def read_job_data(path: Path) -> dict:
    """The job file's YAML mapping, or a one-line error naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found; check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise JobError(f"{path}: cannot read the job file ({exc.__class__.__name__}); give a readable YAML file") from None
    try:
        data = safe_yaml(text)
    except YamlLimitError as exc:
        raise JobError(f"{path}{f':{exc.line}' if exc.line else ''}: {exc}; {exc.hint}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2024-13-45
        raise JobError(f"{path}: malformed YAML value ({_clip(str(exc), 80)}); quote it or fix it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobError(f"{path}{where}: malformed YAML: {problem}; fix the syntax there") from None
    if not isinstance(data, dict):
        raise JobError(f"{path}: a job file must be a YAML mapping with keys name, model, calibration, …")
    return data


def job_from_data(data: dict, path: Path, overrides: list[str] = (), cwd: Path | None = None) -> Job:
    """Validate one job's mapping (paths in it relative to ``path``'s folder)."""
    cwd = Path.cwd() if cwd is None else cwd
    try:
        _resolve_paths(data, path.resolve().parent)
    except JobError as exc:
        raise JobError(f"{path}: {exc}") from None
    for text_override in overrides:
        key, value = parse_override(text_override)
        apply_override(data, key, value, cwd)
    try:
        job = Job.model_validate(data)
    except ValidationError as err:
        raise JobError(_format_error(str(path), err)) from None
    if job.evaluation is not None and job.calibration is not None and "preprocess" not in data.get("evaluation", {}):
        # evaluation images are preprocessed like calibration images unless the job says otherwise
        job = job.model_copy(update={"evaluation": job.evaluation.model_copy(update={"preprocess": job.calibration.preprocess})})
    job._command = " ".join(["trtq", "build", shlex.quote(str(path))] + [f"--set {shlex.quote(o)}" for o in overrides])
    return job


def load_job(path: str | Path, overrides: list[str] = (), cwd: Path | None = None) -> Job:
    path = Path(path)
    data = read_job_data(path)
    if "sweep" in data:
        raise JobError(f"{path}: sweep: this job file expands into several jobs; run it with 'trtq run {path}'")
    return job_from_data(data, path, overrides, cwd)
