"""report.json (for programs) and report.md (for people). Schema: docs/report-schema.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..artifacts import LATENCY_PNG, PER_LAYER_PNG, REPORT_JSON, REPORT_MD, write_atomic_group
from .size import megabytes
from .search import search_lines


def _clean(obj):
    """JSON has no inf/NaN: write them as strings so the file stays standard JSON."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def render_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=False) + "\n"


def write_report(report: dict, folder: Path) -> None:
    """``report.json`` and ``report.md`` into ``folder``, atomically."""
    write_atomic_group([(folder / REPORT_JSON, render_json(report)), (folder / REPORT_MD, render_markdown(report))])


def pct(x) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.2f} %"


def _ci(acc: dict, key: str) -> str:
    ci = acc.get(f"{key}_ci95")
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _db(x) -> str:
    return str(x) if not isinstance(x, (int, float)) or math.isinf(x) else f"{x:.1f}"


def _ms(x) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{x:.2f} ms"


def headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, FP32, INT8, change) rows shared by report.md and the terminal table, each rate
    with its 95 % interval (8 photos at 100 % agreement are [67.6, 100.0], not a certainty)."""
    _c = _ci
    f, i = report.get("fp32", {}), report.get("int8", {})
    fa, ia = f.get("accuracy", {}), i.get("accuracy", {})
    rows = []
    for key in ("top1", "top5"):
        if key in ia:
            delta = 100 * (ia[key] - fa[key])
            rows.append((f"{key.replace('top', 'top-')} ({ia.get('samples', '?')} samples)",
                         pct(fa[key]) + _c(fa, key), pct(ia[key]) + _c(ia, key), f"{delta:+.2f} pts"))
    if "top1_agreement" in ia:
        rows.append(("top-1 agreement", "—", pct(ia["top1_agreement"]) + _c(ia, "top1_agreement"), ""))
    first = next(iter(report.get("tasks", {}).values()), None)
    if first and first["task"] not in ("classification", "generic"):
        for key, label in TASK_METRICS[first["task"]][:2]:
            if key in first:
                rows.append((label, "—", metric_text(key, first[key], first), "vs FP32"))
    fid = ia.get("fidelity")
    if fid:
        rows.append(("output SQNR", "—", f"{fid['sqnr_db']:.1f} dB" if isinstance(fid["sqnr_db"], float) else str(fid["sqnr_db"]), ""))
    fl, il = f.get("latency", {}), i.get("latency", {})
    for bs, st in il.get("by_batch", {}).items():
        fs = fl.get("by_batch", {}).get(bs)
        if fs:
            rows.append((f"latency p50 bs{bs}", _ms(fs["p50_ms"]), _ms(st["p50_ms"]),
                         f"{st['p50_ms'] / fs['p50_ms']:.2f}× FP32"))
    return rows + size_rows(report)


def _smaller(a, b) -> str:
    if not a or not b:
        return ""
    return f"{a / b:.2f}× smaller" if a >= b else f"{b / a:.2f}× larger"


def size_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Headline rows of the model size: model file (model.int8.onnx), engine file, weights alone."""
    size = report.get("size")
    if not size:
        return []
    rows = [("model file (model.int8.onnx)", megabytes(size["fp32_model_bytes"]), megabytes(size["int8_model_bytes"]),
             _smaller(size["fp32_model_bytes"], size["int8_model_bytes"]))]
    if size.get("engine_bytes"):
        rows.append((f"engine file ({report['engine']['path']})", "—", megabytes(size["engine_bytes"]), ""))
    w = size["weights"]
    rows.append(("weights", megabytes(w["fp32_bytes"]), megabytes(w["int8_bytes"]), _smaller(w["fp32_bytes"], w["int8_bytes"])))
    return rows


def not_built_lines(eng: dict, code: str = "") -> list[str]:
    """What a TensorRT build without TensorRT says: the engine is not built, and how to build it
    (``code``: the quote put around each command, e.g. a backtick in Markdown)."""
    cmds = eng["build_on_gpu"]
    return [(f"{eng['reason']}; model.int8.onnx, calibration.cache and ranges.json are written and the Q/DQ "
             "model was evaluated in ONNX Runtime (no latency: its CPU speed says nothing about TensorRT's)"),
            f"build the plan on a GPU machine with TensorRT: {code}{cmds['trtq']}{code}",
            f"or, in this build folder: {code}{cmds['trtexec']}{code}"]


def _tensorrt_lines(report: dict, eng: dict) -> list[str]:
    if not eng.get("built", True):
        summary, *commands = not_built_lines(eng, "`")
        return [f"- **{summary}**"] + [f"- {c}" for c in commands]
    gpu = eng.get("gpu", {})
    lines = [f"- engine `{eng['path']}`: TensorRT {eng['tensorrt_version']}, {eng['mode']} mode"
             f"{' (strongly typed)' if eng.get('strongly_typed') else ''}, built on {gpu.get('name', '?')} "
             f"(compute capability {gpu.get('compute_capability', '?')}); it runs only there and with that TensorRT"]
    ins = eng.get("inspection")
    if ins and ins.get("detailed"):
        lines.append(f"- engine inspector: {ins['int8_layers']} of {ins['compute_layers']} compute layers run in INT8, "
                     f"{len(ins['fallback_layers'])} fell back to higher precision, "
                     f"{len(ins['reformat_layers'])} reformat layers")
        for f in ins["fallback_layers"][:20]:
            lines.append(f"  - fallback: `{f['name']}` ({f['type']}, {f['precision']})")
    gc = report.get("gpu_compute")
    if gc:
        lines += ["", "| GPU compute (CUDA events) | batch | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
        for side in ("fp32", "int8"):
            for bs, st in gc.get(side, {}).items():
                lines.append(f"| {side.upper()} | {bs} | {st['p50_ms']:.3f} | {st['p99_ms']:.3f} | {st['mean_ms']:.3f} |")
    return lines


def _latency_lines(report: dict) -> list[str]:
    lines = []
    for side in ("fp32", "int8"):
        lat = report.get(side, {}).get("latency", {}).get("by_batch", {})
        if lat:
            if side == "fp32":
                lines += ["", "## Latency (interleaved FP32/INT8, ms)", "",
                          "| model | batch | min | mean | p50 | p90 | p95 | p99 | max | CV | per s |",
                          "|---|---|---|---|---|---|---|---|---|---|---|"]
            for bs, s in lat.items():
                warn = " ⚠" if s["unstable"] else ""
                lines.append(f"| {side.upper()} | {bs} | {s['min_ms']:.2f} | {s['mean_ms']:.2f} | {s['p50_ms']:.2f} | "
                             f"{s['p90_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} | "
                             f"{100 * s['cv']:.1f} %{warn} | {s['throughput_per_s']:.1f} |")
    if any(s.get("unstable") for side in ("fp32", "int8")
           for s in report.get(side, {}).get("latency", {}).get("by_batch", {}).values()):
        lines += ["", "⚠ coefficient of variation above 5 %: this machine was noisy; compare ratios, not absolute times."]
    return lines


def _outputs_lines(report: dict) -> list[str]:
    lines = []
    custom = report.get("custom_metric")
    if custom:
        lines += ["", "## Custom metric", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in custom.items()]
    return lines + _tasks_lines(report)


# what each task's figures are called in report.md, in the order shown; rates are percentages
TASK_METRICS = {
    "classification": [("top1_agreement", "top-1 agreement"), ("top1", "top-1"), ("top5", "top-5")],
    "detection": [("map50", "mAP@0.5 vs FP32's boxes"), ("precision", "precision"), ("recall", "recall"),
                  ("class_agreement", "class agreement of matched boxes")],
    "dense": [("mask_iou", "mask IoU"), ("pixel_agreement", "pixel agreement")],
    "sequence": [("identical_rate", "identical decoded sequences"), ("cer", "character error rate"),
                 ("step_agreement", "per-step agreement")],
    "generic": [("sqnr_db", "SQNR"), ("cosine", "cosine"), ("max_abs_error", "max abs error"),
                ("mean_abs_error", "mean abs error")],
}
RATES = {"top1_agreement", "top1", "top5", "precision", "recall", "class_agreement", "pixel_agreement",
         "identical_rate", "cer", "step_agreement"}


def metric_text(key: str, value, res: dict | None = None) -> str:
    """One figure as report.md shows it (a rate with its interval when it has one)."""
    if not isinstance(value, (int, float)):
        return str(value)
    if key in RATES:
        return pct(value) + (_ci(res, key) if res else "")
    if key == "sqnr_db":
        return f"{_db(value)} dB"
    if key.endswith("abs_error"):
        return f"{value:.4g}"
    return f"{value:.4f}"


def _tasks_lines(report: dict) -> list[str]:
    tasks = report.get("tasks")
    if not tasks:
        return []
    lines = ["", "## What INT8 changes in each output", "",
             "INT8 against FP32 as the reference, by what the output means.", "",
             "| output | task | figures |", "|---|---|---|"]
    for name, res in tasks.items():
        shown = [f"{label} {metric_text(k, res[k], res)}" for k, label in TASK_METRICS.get(res["task"], [])
                 if k in res]
        why = f" (inferred: {res['inferred_from']})" if "inferred_from" in res else ""
        lines.append(f"| `{name}` | {res['task']}{why} | {'; '.join(shown)} |")
        gt = res.get("ground_truth")
        if gt:
            lines.append(f"| `{name}` | detection vs ground truth ({gt['images']} images) | mAP@0.5 FP32 "
                         f"{gt['fp32_map50']:.4f}, INT8 {gt['int8_map50']:.4f} |")
    return lines


def _per_layer_lines(report: dict) -> list[str]:
    pl = report.get("per_layer")
    if not pl:
        return []
    by_name = {r["node"]: r for r in pl["layers"]}
    lines = ["", f"## Where accuracy is lost ({pl['samples']} samples)", "",
             "Layers ranked by the relative noise power they add (N_out − N_in, N = 10^(−SQNR/10)); "
             "SQNR of the layer's input (upstream error) and output against FP32.", "",
             "| # | layer | op | input SQNR dB | output SQNR dB | noise added |", "|---|---|---|---|---|---|"]
    for i, name in enumerate(pl["worst"], 1):
        r = by_name[name]
        lines.append(f"| {i} | `{name}` | {r['op']} | {_db(r['input_sqnr_db'])} | {_db(r['output_sqnr_db'])} | "
                     f"{r['added_noise']:.2e} |")
    if PER_LAYER_PNG in report.get("plots", []):
        lines += ["", f"![per-layer SQNR]({PER_LAYER_PNG})"]
    return lines


def _layout_line(cal: dict) -> list[str]:
    layout = cal.get("activation_layout")
    if not layout:
        return []
    total = layout["nchwc_tensors"] + layout["nchw_tensors"]
    if layout["nchwc_tensors"]:
        return [f"- calibration read {layout['nchwc_tensors']} of {total} tensors in ONNX Runtime's NCHWc layout, "
                "the rest in NCHW order (the same statistics either way)"]
    return [f"- calibration read every tensor in NCHW order: {layout['fallback'] or 'none is NCHWc'}"]


def _calibrated_line(cal: dict, pre: dict | None) -> str:
    if pre is None:
        return f"- {cal['tensors']} activation tensors calibrated; data fingerprint `{cal['data_fingerprint'][:16]}…`"
    line = (f"- pre-quantized model: {cal['tensors']} activation scales and {pre['int8_weights']} int8 weights taken "
            f"from its {pre['qdq_activations']} Q/DQ activations, kept as they are")
    if pre["calibrated_tensors"]:
        line += f"; {len(pre['calibrated_tensors'])} tensors without a scale calibrated on {cal['samples']} samples"
    if pre["float_without_scale"]:
        line += (f"; {len(pre['float_without_scale'])} tensors without a scale left float in the ONNX Runtime engine "
                 "(no calibration data)")
    if pre["asymmetric_activations"]:
        line += (f"; {pre['asymmetric_activations']} asymmetric activations "
                 + ("given symmetric int8 ranges for TensorRT (quantization step {:.2f}–{:.2f}× coarser)".format(
                     *pre["step_growth"]) if pre["converted_to_symmetric"] else "kept, which TensorRT cannot take"))
    return line


def _quantization_lines(report: dict) -> list[str]:
    cal, q = report["calibration"], report["quantization"]
    lines = ["", "## Quantization", "",
             f"- {q['quantized_nodes']} weighted ops quantized "
             f"({q.get('weights', 'per_channel').replace('_', '-')} int8 weights), "
             f"{len(q['excluded'])} kept out of INT8 (in {q['excluded_precision'].upper()})"
             + (": " + ", ".join(f"`{n}` ({r})" for n, r in q["excluded"]) if q["excluded"] else ""),
             _calibrated_line(cal, q.get("prequantized"))]
    if q.get("kept_in_float"):
        lines.append(f"- {len(q['kept_in_float'])} layer(s) kept in float by the accuracy target: "
                     + ", ".join(f"`{n}`" for n in q["kept_in_float"]))
    lines += _layout_line(cal)
    if cal.get("cache_header"):
        lines.append(f"- `calibration.cache` header `{cal['cache_header']['header']}` ({cal['cache_header']['from']})")
    eng = report.get("engine", {})
    if eng.get("kernels"):
        k = eng["kernels"]
        lines.append(f"- engine `{eng['path']}`: {k['int8_weighted']} weighted ops run as INT8 kernels, "
                     f"{k['fp32_weighted']} in FP32 (weights {eng.get('weight_bits', 8)}-bit); "
                     f"{k.get('int8_other', 0)} other INT8 kernels (Add, pooling, …)")
    if eng.get("kind") == "tensorrt":
        lines += _tensorrt_lines(report, eng)
    return lines


def render_markdown(report: dict) -> str:
    job = report["job"]
    cal = report["calibration"]
    q = report["quantization"]
    lines = [f"# trtq report: {job['name']}", ""]
    how = (f"calibrator **{cal['method']['method']}** on {cal['samples']} samples ({cal['seconds']:.1f} s)"
           if "prequantized" not in q else "**pre-quantized**: its own scales and int8 weights"
           + (f", {cal['samples']} samples calibrate the tensors it has no scale for" if cal["samples"] else ""))
    lines += [f"Model `{report['model']['path']}` → target **{q['target']}**, {how}.", ""]
    for w in report.get("warnings", []):
        lines += [f"> ⚠ **{w}**", ">"]
    if report.get("warnings"):
        lines += [""]
    rows = headline_rows(report)
    if rows:
        lines += ["| metric | FP32 | INT8 | change |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        if report.get("int8"):
            lines += ["", "Brackets: 95 % Wilson interval of the proportion."]
        lines += [f"Size: {n}." for n in report.get("size", {}).get("notes", [])]
    if not report.get("int8"):
        lines += ["", "No evaluation section in the job: accuracy and latency were not measured."]
    lines += _latency_lines(report) + _outputs_lines(report)
    if LATENCY_PNG in report.get("plots", []):
        lines += ["", f"![latency]({LATENCY_PNG})"]
    lines += _per_layer_lines(report) + search_lines(report) + _quantization_lines(report)
    m = report["machine"]
    lines += ["", "## Machine", "", f"- {m['cpu']} ({m['machine']}), VNNI: {'yes' if m['vnni'] else 'no'}, "
              f"threads: {report.get('threads') or 'onnxruntime default'}",
              f"- trtq {report['versions']['trtq']}, onnxruntime {report['versions']['onnxruntime']}, "
              f"onnx {report['versions']['onnx']}, numpy {report['versions']['numpy']}", ""]
    return "\n".join(lines)
