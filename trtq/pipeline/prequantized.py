"""Building a pre-quantized model (one that already held Q/DQ, see ``model/prequant.py``): its
scales become the ranges (and so ``calibration.cache`` and ``ranges.json``), its int8 weights
are kept exactly, TensorRT gets the model's own placement, and ONNX Runtime gets the flavour it
fuses, re-placed from the FP32 graph with those ranges and weights. Tensors the ONNX Runtime
flavour wants a range for and the model has none: calibrated when the job gives data, else left
float with a note.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..calib.calibrate import Calibration, calibrate
from ..calib.ranges import Range
from ..errors import JobError, ModelError
from ..job import Job
from ..model.prepare import PreparedModel
from ..model.prequant import PreQuantized, carry_ranges, non_negative, restrict_plan, symmetric_scale, tensorrt_problems
from ..progress import Progress
from ..quant.policy import ONNXRUNTIME
from ..quant.weights import FixedWeight

MAX_NAMED = 3  # offending nodes named in one error line


def check_target(job: Job, prepared: PreparedModel) -> None:
    """Before any work: what the job's target cannot take from this pre-quantized model."""
    pq, q = prepared.prequantized, job.quantization
    if pq is None:
        return
    if q.weights != "per_channel" or q.weight_method != "max" or q.adaround or q.cross_layer_equalization:
        raise JobError(f"{job.model}: quantization.weights/weight_method/adaround/cross_layer_equalization: this "
                       "model's weights are already quantized and are kept as they are; remove those keys")
    if q.accuracy_target is not None or job.calibrator.method == "auto":
        raise JobError(f"{job.model}: quantization.accuracy_target/calibrator.method auto: this model's scales are "
                       "already chosen and are kept as they are; remove those keys")
    if q.target != "tensorrt":
        return
    if job.tensorrt.mode == "implicit":
        raise JobError(f"{job.model}: tensorrt.mode: implicit builds from an FP32 model and a calibrator; this model "
                       "already holds Q/DQ nodes, so build it in explicit mode (tensorrt.mode: explicit)")
    problems = tensorrt_problems(pq, q.convert_asymmetric)
    if problems:
        more = f" (and {len(problems) - MAX_NAMED} more)" if len(problems) > MAX_NAMED else ""
        fix = ("set quantization.convert_asymmetric: true to give them symmetric int8 ranges, or target onnxruntime"
               if any("zero point" in p and "weights" not in p for p in problems) else "re-export it for TensorRT "
               "(symmetric int8, per-tensor activation scales) or target onnxruntime")
        raise ModelError(f"{job.model}: TensorRT cannot take this pre-quantized model: "
                         f"{'; '.join(problems[:MAX_NAMED])}{more}; {fix}")


def model_ranges(model, pq: PreQuantized) -> dict[str, Range]:
    """A :class:`Range` per tensor the model quantizes per tensor (and the tensors that only move
    its values, which share its scale). A symmetric range on a tensor that cannot be negative (a
    ReLU6 output) starts at 0: the ONNX Runtime flavour's uint8 range then ends where the model's
    clips, and ONNX Runtime can fold the Clip into the convolution before it."""
    out, positive = {}, non_negative(model)
    for tensor, a in carry_ranges(model, pq.activations).items():
        if not a.per_axis:
            r = Range.from_quantization(float(a.scale.reshape(-1)[0]), int(a.zero_point.reshape(-1)[0]), *a.qrange)
            out[tensor] = Range(r.amax, 0.0, r.max) if tensor in positive and r.min < 0 else r
    return out


def fixed_weights(pq: PreQuantized) -> dict[str, FixedWeight]:
    return {name: FixedWeight(q, scale, axis) for name, (q, scale, axis) in pq.weights.items()}


def calibration(job: Job, prepared: PreparedModel, progress: Progress, store_root, reuse: bool,
                shard_map) -> tuple[Calibration, PreparedModel, dict]:
    """The model's ranges (plus calibrated ones for the tensors it has none for, when the job has
    data); the prepared model with the plan those ranges allow; the report's ``prequantized``."""
    t0 = time.perf_counter()
    pq = prepared.prequantized
    ranges = model_ranges(prepared.model, pq)
    missing = [t for t in ONNXRUNTIME.tensors(prepared.plan) if t not in ranges]  # TensorRT's without a placement
    info = {"method": {"method": "pre-quantized"}, "samples": 0, "tensors": 0, "data_fingerprint": None}
    if missing and job.calibration is not None:
        cal = calibrate(prepared, job.calibration, job.calibrator, progress, store_root, reuse, shard_map)
        ranges.update({t: cal.ranges[t] for t in missing})
        info = {**cal.info, "method": {"method": "pre-quantized", "missing_tensors": cal.info["method"]}}
    elif missing:
        progress.note(f"{len(missing)} tensor(s) the ONNX Runtime engine would quantize have no scale in the model "
                      f"and the job has no calibration data: left float ({', '.join(missing[:5])}"
                      f"{' …' if len(missing) > 5 else ''}); add a calibration section to calibrate them")
    info.update(tensors=len(ranges), seconds=time.perf_counter() - t0)
    plan = restrict_plan(prepared.plan, set(pq.weights), set(ranges))
    converted = [t for t, a in pq.activations.items() if not a.symmetric_int8 and not a.per_axis]
    steps = [float(symmetric_scale(pq.activations[t]) / pq.activations[t].scale.reshape(-1)[0]) for t in converted]
    summary = {"qdq_activations": len(pq.activations), "int8_weights": len(pq.weights),
               "asymmetric_activations": len(converted),
               "converted_to_symmetric": bool(converted) and job.quantization.convert_asymmetric,
               "calibrated_tensors": missing if job.calibration is not None else [],
               "float_without_scale": missing if job.calibration is None else []}
    if converted and job.quantization.convert_asymmetric:
        summary["step_growth"] = [min(steps), max(steps)]
        progress.note(f"{len(converted)} asymmetric activation(s) given symmetric int8 ranges for TensorRT: their "
                      f"quantization step grew {min(steps):.2f}–{max(steps):.2f}× (up to "
                      f"{20 * np.log10(max(steps)):.1f} dB more noise on those tensors)")
    elif converted:
        progress.note(f"{len(converted)} activation(s) are asymmetric (zero point or uint8): model.int8.onnx keeps "
                      "them as the model has them, which TensorRT cannot take; quantization.convert_asymmetric: true "
                      "rewrites them symmetric")
    return Calibration({}, ranges, {}, info), replace(prepared, plan=plan), summary
