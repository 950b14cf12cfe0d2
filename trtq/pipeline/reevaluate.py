"""``trtq eval``: evaluate an existing build again, without calibrating or rebuilding it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..artifacts import ADAROUND, EQUALIZATION, MEANS, QDQ_MODEL, RANGES, REPORT_JSON
from ..calib.channels import with_scales
from ..calib.ranges import Range
from ..errors import JobError
from ..job import Job
from ..model.prepare import prepare
from ..model.prequant import restrict_plan
from ..progress import Progress
from ..quant.adaround import load_fixed
from ..report.assemble import add_evaluation
from ..report.writer import write_report
from .build import BuildResult, evaluate_build
from .variants import ort_qdq


def _ort_qdq(prepared, folder: Path, report: dict, ranges_doc: dict) -> onnx.ModelProto:
    """The ONNX Runtime-flavour Q/DQ model the build made (not kept on disk): from its ranges,
    weight bits and channel means."""
    ranges = {k: Range.from_json(v) for k, v in ranges_doc["tensors"].items()}
    means = None
    if (folder / MEANS).is_file():
        with np.load(folder / MEANS) as z:
            means = {k: z[k] for k in z.files}
    fixed = load_fixed(folder / ADAROUND) if (folder / ADAROUND).is_file() else None  # learned rounding
    q = report["quantization"]
    return ort_qdq(prepared, ranges, means, report["engine"].get("weight_bits", 8), q.get("weight_method", "max"),
                   q.get("weights", "per_channel"), fixed)


def reevaluate(job: Job, out_root: Path | None = None, progress: Progress | None = None) -> BuildResult:
    """Evaluate ``<out_root>/<job.name>`` again with the job's (possibly changed) evaluation section."""
    progress = progress or Progress()
    if job.evaluation is None:
        raise JobError("evaluation: the job has no evaluation section; add one to evaluate")
    folder = (Path(out_root) if out_root is not None else job.output) / job.name
    if not (folder / REPORT_JSON).is_file() or not (folder / RANGES).is_file():
        raise JobError(f"{folder}: no build of job '{job.name}' there; run 'trtq build' first (or give --out)")
    report = json.loads((folder / REPORT_JSON).read_text())
    ranges_doc = json.loads((folder / RANGES).read_text())
    q = job.quantization
    # the layers the build's accuracy target kept in float are the build's configuration
    exclude = tuple(q.exclude_nodes) + tuple(report["quantization"].get("kept_in_float", []))
    prepared = prepare(job.model, job.input_shapes, q.exclude_ops, exclude, job.inputs,
                       cross_layer=bool(report["quantization"].get("cross_layer_equalization")),
                       for_onnxruntime=q.target == "onnxruntime")
    if (folder / EQUALIZATION).is_file():  # the build equalized the model: evaluate that model
        with np.load(folder / EQUALIZATION) as z:
            prepared = with_scales(prepared, {k: z[k] for k in z.files}, q.exclude_ops, exclude)
    if prepared.prequantized is not None:  # the plan the build re-placed: the model's weights, where ranges exist
        prepared = replace(prepared, plan=restrict_plan(prepared.plan, set(prepared.prequantized.weights),
                                                        set(ranges_doc["tensors"])))
    if ranges_doc["model_sha256"] != prepared.sha256:
        raise JobError(f"{job.model}: the model changed since {folder} was built; rebuild with 'trtq build'")
    engine = report["engine"]
    if report["quantization"]["target"] == "tensorrt":
        qdq = onnx.load(str(folder / QDQ_MODEL))
    else:
        qdq = _ort_qdq(prepared, folder, report, ranges_doc)
    result = evaluate_build(job, prepared, folder, engine, qdq, progress)
    add_evaluation(report, result.sections, result.latency_ms, folder)
    report["job"]["evaluation"] = job.evaluation.model_dump(mode="json", by_alias=True)
    write_report(report, folder)
    return BuildResult(folder, report)
