"""Pre-quantized models deployed as they are: EfficientNet-Lite0 quantized by ONNX Runtime's
``quantize_static`` (QDQ, per-channel weights, MinMax on a few ImageNet photos), then built by
trtq without calibration data.

    flock /tmp/trtq-bench.lock python bench/prequantized.py      # writes bench/results/prequantized.md

For the symmetric S8S8 model (TensorRT's form) and the U8S8 one: weighted ops running as INT8
kernels in ONNX Runtime, top-1, agreement and logits SQNR against the FP32 model, and batch-1
latency interleaved with FP32 — the quantizer's model as ONNX Runtime loads it ("before") and
trtq's engine re-placed in the flavour ONNX Runtime fuses, with the model's own scales and int8
weights ("after"). A second table: the models as TensorRT takes them (``model.int8.onnx``, run
unfused in ONNX Runtime: the arithmetic the engine implements), the U8S8 one with its asymmetric
ranges converted to symmetric (``quantization.convert_asymmetric``) — what that costs in SQNR.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import yaml
from _common import EFFNET, IMAGES, PREPROCESS, ROOT, machine_line, missing_shared, publish
from peers import _data, _measure, _ort_quantize

from trtq.api import build, load_job
from trtq.evaluation.metrics import sqnr_db
from trtq.model.load import load_model
from trtq.model.prepare import prepare
from trtq.runtime.onnxruntime import Runner, session

CONFIGS = {"S8S8": "S8S8 symmetric (TensorRT-style)", "U8S8": "U8S8 MinMax"}


def _trtq(model: Path, target: str, tmp: Path, **quantization) -> Path:
    job = {"name": f"{model.stem}-{target}", "model": str(model), "output": str(tmp / "engines"),
           "quantization": {"target": target, **quantization}}
    path = tmp / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return build(load_job(path)).out_dir


def _logits(model, evaluation, optimize: bool = True) -> np.ndarray:
    run = Runner(session(model, optimize=optimize))
    return np.concatenate([run(b.feeds)[0] for b in evaluation])


def _row(name: str, m: dict, sqnr: float) -> str:
    f, q = m["latency"][1]
    return (f"| {name} | {m['int8_kernels']} / {m['fp32_kernels']} | {100 * m['top1']:.2f} % | {100 * m['agree']:.2f} % "
            f"| {sqnr:.1f} | {f:.2f} → {q:.2f} | {f / q:.2f}× |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=int, default=16, help="photos ONNX Runtime's quantizer calibrates on")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prequantized.md")
    args = ap.parse_args()
    if missing_shared(IMAGES, EFFNET):
        return
    tmp = Path(tempfile.mkdtemp(prefix="trtq-prequant-"))
    fp32 = load_model(EFFNET)
    spec = {"path": str(IMAGES), "preprocess": PREPROCESS}
    calib = _data(spec, fp32, 0, args.calibration, 8)
    evaluation = _data(spec, fp32, 100, 200, 8)
    ref = _logits(fp32, evaluation)
    rows, trt_rows, weight_rows, fp32_top1 = [], [], [], None
    for short, config in CONFIGS.items():
        pre = tmp / f"efficientnet_lite0_{short.lower()}.onnx"
        _ort_quantize(EFFNET, pre, calib, config)
        before = _measure(fp32, pre, evaluation, args.iterations, (1,), tmp, None)
        fp32_top1 = before["fp32_top1"]
        rows.append(_row(f"{short}: ONNX Runtime quantizer's model, as ONNX Runtime loads it", before,
                         sqnr_db(ref, _logits(onnx.load(str(pre)), evaluation))))
        weight_rows.append(f"| {short} | {sqnr_db(ref, _logits(prepare(pre).model, evaluation)):.1f} |")
        engine = _trtq(pre, "onnxruntime", tmp) / "engine.ort.onnx"
        after = _measure(fp32, engine, evaluation, args.iterations, (1,), tmp, None, preoptimized=True)
        rows.append(_row(f"{short}: trtq, re-placed for ONNX Runtime (model's scales and int8 weights)", after,
                         sqnr_db(ref, _logits(engine, evaluation, optimize=False))))
        print(rows[-2], rows[-1], sep="\n", flush=True)
        trt = _trtq(pre, "tensorrt", tmp, convert_asymmetric=True)
        qdq = onnx.load(str(trt / "model.int8.onnx"))
        logits = _logits(qdq, evaluation, optimize=False)
        top1 = float(np.mean(logits.argmax(1) == np.concatenate([b.labels for b in evaluation])))
        as_is = _logits(onnx.load(str(pre)), evaluation, optimize=False)
        growth = build_growth(trt)
        trt_rows.append(f"| {short} | {'converted to symmetric int8' + growth if short == 'U8S8' else 'as it is'} | "
                        f"{sqnr_db(ref, as_is):.1f} | {sqnr_db(ref, logits):.1f} | {100 * top1:.2f} % |")
        print(trt_rows[-1], flush=True)
    text = "\n".join([
        f"# Pre-quantized models: EfficientNet-Lite0 quantized by ONNX Runtime — {time.strftime('%Y-%m-%d')}", "",
        f"{machine_line()} `flock /tmp/trtq-bench.lock python "
        f"bench/prequantized.py`. ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, MinMax) on the "
        f"first {args.calibration} photos of imagenet-sample-500; trtq builds the result with no calibration data. "
        f"Evaluated on photos 101–300 (FP32 top-1 {100 * fp32_top1:.2f} %); SQNR of the logits against the FP32 "
        f"model; latency: batch 1, medians of {args.iterations} iterations interleaved with FP32 in one loop, "
        "intra-op threads onnxruntime's default.", "",
        "| model | weighted ops INT8 / FP32 kernels | top-1 | agreement with FP32 | SQNR dB | bs1 FP32 → INT8 ms "
        "| speed-up |", "|---|---|---|---|---|---|---|", *rows, "",
        "## As TensorRT takes them", "",
        "`model.int8.onnx` of `quantization.target: tensorrt` (the model's own placement; int32 bias DQs folded to "
        "FP32), run unfused in ONNX Runtime (the arithmetic a TensorRT engine implements; no TensorRT here). The U8S8 "
        "model needs `quantization.convert_asymmetric: true`: each uint8 range becomes the symmetric int8 range "
        "covering it (a Clip keeps the range where it started at 0: the quantizer had dropped the ReLU6 there).", "",
        "| quantizer's model | for TensorRT | SQNR dB, model as given (unfused) | SQNR dB, model.int8.onnx | top-1 |",
        "|---|---|---|---|---|", *trt_rows, "",
        "## The weights alone", "",
        "The FP32 graph trtq strips each model to (its int8 weights dequantized, activations not quantized), against "
        "the FP32 model: what the quantizer's weights cost before any activation is rounded. A build's evaluation "
        "measures INT8 against this graph.", "",
        "| quantizer's model | logits SQNR dB, FP32 graph of the pre-quantized model |", "|---|---|", *weight_rows, ""])
    publish(text, args.out)


def build_growth(folder: Path) -> str:
    import json

    pre = json.loads((folder / "report.json").read_text())["quantization"]["prequantized"]
    if not pre.get("step_growth"):
        return ""
    lo, hi = pre["step_growth"]
    return f" ({pre['asymmetric_activations']} tensors, step {lo:.2f}–{hi:.2f}× coarser)"


if __name__ == "__main__":
    main()
