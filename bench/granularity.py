"""Per-channel against per-tensor weight scales (``quantization.weights``), on EfficientNet-Lite0
and the PP-OCR models in ../shared/models.

    python bench/granularity.py            # writes bench/results/granularity.md

Each model is built twice with its job (configs/, configs/real/), ONNX Runtime engine; the table
gives the task metric (top-1 on labelled ImageNet photos; the OCR models INT8 against FP32:
detector text-mask IoU at 0.3, recogniser greedy CTC strings identical, classifier top-1
agreement) and the output SQNR against FP32. A second table shows where per-tensor breaks: the
layers that add the most noise with per-tensor weights, their weights' own SQNR under each
granularity, and the layer outputs' SQNR in the INT8 model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, SHARED, machine_line, missing_shared, publish, worst_sqnr

import trtq
from trtq.evaluation.metrics import sqnr_db

IMAGES = SHARED / "data" / "imagenet-sample-500"
OCR = ROOT / "data" / "ocr"
LIGHT = ["evaluation.latency.iterations=1", "evaluation.latency.warmup=0", "evaluation.latency.batch_sizes=[1]"]
METRICS = ROOT / "bench" / "ocr_metrics.py"


def _profile(shape: str, batch: int) -> list[str]:
    """TensorRT shape profile of the PP-OCR input 'x' (dynamic height and width) at the data's shape."""
    return [f"tensorrt.profiles.x.min=[1,{shape}]", f"tensorrt.profiles.x.opt=[{batch},{shape}]",
            f"tensorrt.profiles.x.max=[{batch},{shape}]"]


def jobs() -> list[tuple[str, Path, list[str], str, list[str]]]:
    """(name, job file, --set overrides, task metric key, overrides for the TensorRT target)."""
    real = ROOT / "configs" / "real"

    def ocr(d: str, skip: int) -> list[str]:
        return [f"calibration.path={OCR / d}", f"calibration.max_samples={skip}", f"evaluation.path={OCR / d}",
                f"evaluation.skip={skip}"]
    return [
        ("EfficientNet-Lite0", ROOT / "configs" / "efficientnet_lite0.yaml",
         [f"model={SHARED / 'models' / 'efficientnet_lite0.onnx'}", f"calibration.path={IMAGES}",
          "calibration.max_samples=100", f"evaluation.path={IMAGES}", "evaluation.skip=100",
          "evaluation.max_samples=200", "evaluation.per_layer_samples=8"], "top1", []),
        ("PP-OCRv4 det", real / "ppocr_det.yaml", ocr("pages", 8) + [f"evaluation.metric={METRICS}:det_mask_iou"],
         "mask_iou", _profile("3,480,640", 4)),
        ("PP-OCRv4 rec", real / "ppocr_rec.yaml",
         ocr("lines", 32) + [f"evaluation.metric={METRICS}:rec_strings_identical"], "strings_identical",
         _profile("3,48,320", 8)),
        ("PP-OCR cls", real / "ppocr_cls.yaml", ocr("direction", 32) + ["evaluation.per_layer_samples=8"],
         "top1_agreement", _profile("3,48,192", 8)),
    ]


METRIC_NAMES = {"top1": "top-1 (labels)", "mask_iou": "text-mask IoU vs FP32 at 0.3",
                "strings_identical": "CTC strings identical to FP32", "top1_agreement": "top-1 agreement with FP32"}


def task_metric(report: dict, key: str) -> float:
    if key in report.get("custom_metric", {}):
        return report["custom_metric"][key]
    return report["int8"]["accuracy"][key]


def weight_sqnr(model_path: Path) -> dict[str, tuple[str, float, float]]:
    """node → (kind, weight SQNR per channel, per tensor) for every Conv/Gemm weight."""
    from onnx import helper, numpy_helper

    from trtq.model.prepare import prepare
    from trtq.quant.weights import dequantize_weights, quantize_weights, weight_scales

    prepared = prepare(model_path)
    inits = {i.name: i for i in prepared.model.graph.initializer}
    nodes = {n.name: n for n in prepared.model.graph.node}
    out = {}
    for q in prepared.plan.nodes:
        w = numpy_helper.to_array(inits[q.weight]).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in nodes[q.node].attribute}
        depthwise = q.op_type == "Conv" and attrs.get("group", 1) > 1 and attrs.get("group") == w.shape[0]
        cells = []
        for g in ("per_channel", "per_tensor"):
            s = weight_scales(w, q.axis, granularity=g)
            cells.append(sqnr_db(w, dequantize_weights(quantize_weights(w, s, q.axis), s, q.axis)))
        out[q.node] = ("depthwise Conv" if depthwise else q.op_type, *cells)
    return out


def per_layer_rows(name: str, model: Path, reports: dict, n: int = 4) -> list[str]:
    layers = {g: {r["node"]: r for r in rep.get("per_layer", {}).get("layers", [])} for g, rep in reports.items()}
    if not layers["per_tensor"]:
        return []
    wq = weight_sqnr(model)
    worst = sorted(layers["per_tensor"].values(), key=lambda r: -r["added_noise"])[:n]
    rows = []
    for r in worst:
        kind, w_pc, w_pt = wq.get(r["node"], (r["op"], float("nan"), float("nan")))
        pc = layers["per_channel"].get(r["node"], {})
        rows.append(f"| {name} | `{r['node']}` | {kind} | {w_pc:.1f} | {w_pt:.1f} | "
                    f"{pc.get('output_sqnr_db', float('nan')):.1f} | {r['output_sqnr_db']:.1f} |")
    return rows


def depthwise_summary(model: Path) -> str:
    """Per kind of layer (depthwise or other): how much weight SQNR per-tensor loses (median) and
    the worst layer's per-tensor weight SQNR."""
    groups: dict[str, list[tuple[str, float, float]]] = {}
    for node, (kind, pc, pt) in weight_sqnr(model).items():
        groups.setdefault("depthwise" if kind == "depthwise Conv" else "other", []).append((node, pc, pt))
    parts = []
    for kind, layers in sorted(groups.items()):
        node, pc, pt = min(layers, key=lambda x: x[2])
        parts.append(f"{kind} {len(layers)} layers, median {float(np.median([b - a for _, a, b in layers])):+.1f} dB, "
                     f"worst `{node}` {pt:.1f} dB (per-channel {pc:.1f})")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "granularity.md")
    args = ap.parse_args()
    if missing_shared(IMAGES, SHARED / "models", OCR):
        return
    tmp = Path(tempfile.mkdtemp(prefix="trtq-granularity-"))
    rows, layer_rows, dw = [], [], []
    for name, path, sets, metric, trt_sets in jobs():
        reports, trt = {}, {}
        for g in ("per_channel", "per_tensor"):
            job = trtq.load_job(path, sets + LIGHT + [f"quantization.weights={g}"])
            reports[g] = trtq.build(job, out=tmp / g).report
            # the TensorRT flavour's Q/DQ model, run unfused in ONNX Runtime (no TensorRT here)
            trt_job = trtq.load_job(path, sets + LIGHT + trt_sets + [f"quantization.weights={g}",
                                                                     "quantization.target=tensorrt",
                                                                     "evaluation.per_layer_samples=0"])
            trt[g] = trtq.build(trt_job, out=tmp / f"trt-{g}").report
        pc, pt = reports["per_channel"], reports["per_tensor"]
        fp32 = f"{100 * pc['fp32']['accuracy']['top1']:.2f} %" if metric == "top1" else "—"
        rows.append(f"| {name} | {METRIC_NAMES[metric]} | {fp32} | {100 * task_metric(pc, metric):.2f} % | "
                    f"{100 * task_metric(pt, metric):.2f} % | {worst_sqnr(pc):.1f} | {worst_sqnr(pt):.1f} | "
                    f"{worst_sqnr(trt['per_channel']):.1f} | {worst_sqnr(trt['per_tensor']):.1f} | "
                    f"{pc['int8']['accuracy']['samples']} |")
        print(rows[-1], flush=True)
        model = Path(job.model)
        layer_rows += per_layer_rows(name, model, reports)
        dw.append(f"- {name}: {depthwise_summary(model)}")
    text = "\n".join([
        f"# Weight granularity: per-channel against per-tensor — {time.strftime('%Y-%m-%d')}", "",
        f"{machine_line()} `python bench/granularity.py`; one build per "
        "granularity, ONNX Runtime INT8 engine, `quantization.weights` the only difference (activations and the "
        "calibration cache are the same). EfficientNet-Lite0: 100 ImageNet photos calibrate, the next 200 evaluate "
        "(percentile 99.99); OCR: the data `python examples/ocr_data.py data/ocr` renders, the configs' calibrators, "
        "evaluation on the samples after the calibration ones. SQNR: the worst output, INT8 engine against FP32.", "",
        "| model | task metric | FP32 | INT8 per-channel | INT8 per-tensor | SQNR dB per-channel | "
        "SQNR dB per-tensor | TensorRT Q/DQ SQNR dB per-channel | TensorRT Q/DQ SQNR dB per-tensor | samples |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "TensorRT Q/DQ: `model.int8.onnx` of the same job with `quantization.target: tensorrt` (symmetric int8 "
        "activations, FP32 bias), run unfused in ONNX Runtime — the arithmetic a TensorRT engine implements; no "
        "TensorRT engine was built.", "",
        "## Where per-tensor breaks", "",
        "Weight SQNR: quantize→dequantize of the weight alone against its FP32 values, per granularity; by kind of "
        "layer, the median change per-tensor − per-channel and the layer whose weights per-tensor quantizes worst:", "", *dw, "",
        "The layers adding the most noise with per-tensor weights (per-layer analysis on the evaluation's first "
        "samples; layer output SQNR in the whole INT8 model, so it includes the noise of the layers before):", "",
        "| model | layer | kind | weight SQNR dB per-channel | weight SQNR dB per-tensor | output SQNR dB per-channel "
        "| output SQNR dB per-tensor |",
        "|---|---|---|---|---|---|---|", *layer_rows, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
