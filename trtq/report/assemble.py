"""``report.json``'s document, assembled from the values each stage returned (schema:
docs/report-schema.md), and the evaluation's plots beside it."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..artifacts import (ADAROUND, CACHE, EQUALIZATION, LATENCY_PNG, MEANS, PER_LAYER_PNG, PLAN_META, QDQ_MODEL, RANGES,
                         REPORT_JSON, REPORT_MD, SENSITIVITY_PNG, TARGET_PNG, TRT_CACHE)
from ..job import Job
from ..model.prepare import PreparedModel
from . import plots

SCHEMA_VERSION = 1
MIN_INT8_FRACTION = 0.9  # fewer weighted ops than this running as INT8 kernels is worth a warning


def warnings(report: dict) -> list[str]:
    """What a user must not miss: INT8 slower than FP32, weighted ops that did not become INT8
    kernels, narrow channels nothing could widen."""
    out = []
    for bs, ratio in report.get("latency_ratio", {}).items():
        if ratio > 1:
            out.append(f"INT8 is slower than FP32 at batch {bs}: {ratio:.2f}× FP32's latency")
    k = report.get("engine", {}).get("kernels")
    if k:
        total = k["int8_weighted"] + k["fp32_weighted"]
        if total and k["int8_weighted"] < MIN_INT8_FRACTION * total:
            names = ", ".join(k.get("fp32_weighted_nodes", [])[:5])
            out.append(f"only {k['int8_weighted']} of {total} weighted ops run as INT8 kernels; still FP32: {names}"
                       + (" …" if k["fp32_weighted"] > 5 else ""))
    conf = report.get("search", {}).get("accuracy_target", {}).get("confirmation", {})
    if conf.get("meets") is False:
        t = report["search"]["accuracy_target"]
        out.append(f"the accuracy target {t['metric']} {t['op']} {t['threshold']:.4g} was met on the selection "
                   f"samples but not on the {conf['samples']} confirmation samples ({conf['chosen']:.4g})")
    for f in report.get("quantization", {}).get("narrow_channels", []):
        cap = f["sqnr_cap_after_db"] if f["equalized"] else f["sqnr_cap_db"]
        if cap is not None:
            out.append(f"narrow channels in '{f['tensor']}' cap '{f['at']}' at about {cap:.0f} dB SQNR")
    return out


def engine_files(engine: dict) -> list[str]:
    """The files an engine section stands for, in the order the report lists them."""
    if not engine or not engine.get("path"):  # no engine built here
        return []
    files = [engine["path"]]
    if engine.get("kind") == "tensorrt":
        files.append(PLAN_META)
        if engine.get("calibration", {}).get("source") == "tensorrt":
            files.append(TRT_CACHE)
    return files


def build_report(job: Job, prepared: PreparedModel, calibration: dict, quantization: dict, engine: dict,
                 machine: dict, size: dict | None = None) -> dict:
    """The report of one build before its evaluation (see :func:`add_evaluation`); ``size``:
    :func:`~trtq.report.size.model_size` of the build's files."""
    report = _document(job, prepared, calibration, quantization, engine, machine)
    if size is not None:
        report["size"] = size
    report["warnings"] = warnings(report)
    return report


def _document(job: Job, prepared: PreparedModel, calibration: dict, quantization: dict, engine: dict,
              machine: dict) -> dict:
    inputs = [{"name": i.name, "shape": list(i.shape), "dtype": str(i.dtype), "batch_axis": i.batch_axis,
               **({"constant": i.constant.tolist()} if i.constant is not None else {})} for i in prepared.inputs]
    return {
        "schema_version": SCHEMA_VERSION,
        "job": job.model_dump(mode="json", by_alias=True),
        "versions": {"trtq": __version__, "onnxruntime": machine["onnxruntime"], "onnx": onnx.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "machine": machine,
        "threads": job.evaluation.latency.threads if job.evaluation else None,
        "model": {"path": str(job.model), "sha256": prepared.sha256, "inputs": inputs, "outputs": prepared.outputs,
                  "folded_control_flow": prepared.folded,
                  "prepared": {step: len(nodes) for step, nodes in prepared.rewrites.items()}},
        "calibration": calibration,
        "quantization": quantization,
        "engine": engine,
        "artifacts": [QDQ_MODEL, CACHE, RANGES] + ([MEANS] if quantization["bias_correction"] else [])
                     + ([EQUALIZATION] if prepared.equalized else [])
                     + ([ADAROUND] if quantization.get("adaround") else [])
                     + engine_files(engine) + [REPORT_JSON, REPORT_MD],
    }


def add_evaluation(report: dict, sections: dict, latency_ms: dict, folder: Path) -> None:
    """Put an evaluation's sections into ``report`` (replacing an earlier evaluation's) and write
    its plots into ``folder``."""
    for key in ("per_layer", "custom_metric", "gpu_compute", "latency_ratio", "tasks", "sensitivity"):
        report.pop(key, None)
    report.update(sections)
    names = []
    if latency_ms:
        plots.latency_plot(latency_ms, folder / LATENCY_PNG)
        names.append(LATENCY_PNG)
    if "per_layer" in sections:
        plots.per_layer_plot(sections["per_layer"], folder / PER_LAYER_PNG)
        names.append(PER_LAYER_PNG)
    report["plots"] = names
    report["artifacts"] = list(dict.fromkeys(report["artifacts"] + names))
    report["warnings"] = warnings(report)


def add_search(report: dict, section: dict, folder: Path) -> None:
    """The build's searches (calibration method, sensitivity, accuracy target) and their plots."""
    report["search"] = section
    names = []
    if section.get("sensitivity", {}).get("layers"):
        plots.sensitivity_plot(section["sensitivity"], folder / SENSITIVITY_PNG)
        names.append(SENSITIVITY_PNG)
    target = section.get("accuracy_target")
    if target and any(r["latency_ratio"] is not None for r in target["steps"]):
        plots.target_plot(target, folder / TARGET_PNG)
        names.append(TARGET_PNG)
    report["plots"] = report.get("plots", []) + names
    report["artifacts"] = list(dict.fromkeys(report["artifacts"] + names))
    report["warnings"] = warnings(report)
