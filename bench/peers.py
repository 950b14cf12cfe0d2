"""trtq against its peers on the same images, the same machine, in one run.

    python bench/peers.py [--shared ../shared] [--iterations 200]

For EfficientNet-Lite0 (calibrate on the first 100 photos of imagenet-sample-500, evaluate on
the other 400) and the ONNX-zoo MNIST CNN (calibrate on the first 1000 test images, evaluate on
all 10,000), every tool builds an INT8 ONNX model that ONNX Runtime runs on this CPU:

* trtq (its default job: percentile 99.99, ONNX Runtime engine);
* ONNX Runtime ``quantize_static`` — QDQ, per-channel — as U8S8 MinMax, U8S8 Percentile, and
  the TensorRT-style config (S8S8, symmetric activations and weights, MinMax);
* NVIDIA ModelOpt's ONNX PTQ, when ``modelopt`` imports (it needs torch and onnxruntime-gpu,
  so it is usually absent on a CPU machine; the table says so).

Reported per tool: top-1, top-1 agreement with FP32, batch-1 and batch-8 median latency timed
interleaved with FP32, the speed-up, and how many weighted ops run as INT8 kernels in ONNX
Runtime's optimized graph. Writes bench/results/peers.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

from _common import PREPROCESS, ROOT, publish  # noqa: E402 (puts the repository on sys.path)

sys.path.insert(0, str(ROOT / "examples"))

from trtq.engine.onnxruntime import count_kernels  # noqa: E402
from trtq.runtime.onnxruntime import Runner, cpu_info, session  # noqa: E402
from trtq.data.sources import batches, open_source  # noqa: E402
from trtq.evaluation.latency import interleaved  # noqa: E402
from trtq.job import DataSpec  # noqa: E402
from trtq.model.load import input_specs, load_model  # noqa: E402



def _data(spec: dict, model: onnx.ModelProto, skip: int, count: int | None, bs: int):
    inputs = input_specs(model)
    s = DataSpec.model_validate({**spec, "batch_size": bs, "skip": skip, "max_samples": count})
    return list(batches(open_source(s, inputs, "data"), inputs, bs, "data", skip, count))


def _ort_quantize(fp32_path: Path, out: Path, calib, config: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else dict(b.feeds)

    kw = dict(quant_format=QuantFormat.QDQ, per_channel=True)
    if config == "U8S8 MinMax":
        kw.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    elif config == "U8S8 Percentile":
        kw.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=CalibrationMethod.Percentile)
    else:  # TensorRT-style: symmetric int8 activations and weights
        kw.update(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                  extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    quantize_static(str(fp32_path), str(out), Reader(), **kw)


def _trtq_build(job: dict, tmp: Path) -> Path:
    import yaml

    path = tmp / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    subprocess.run([sys.executable, "-m", "trtq", "build", str(path), "-q", "--force", "--out", str(tmp / "engines")],
                   check=True, capture_output=True, text=True)
    return tmp / "engines" / job["name"] / "engine.ort.onnx"


def _measure(fp32_model, int8_path: Path, evaluation, iterations: int, batch_sizes, tmp: Path, threads,
             preoptimized: bool = False) -> dict:
    """``preoptimized``: trtq's engine is already optimized for this CPU and is loaded as trtq
    deploys it; the peers' Q/DQ models are optimized by ONNX Runtime at load time."""
    fp32 = Runner(session(fp32_model, threads=threads))
    if preoptimized:
        int8 = Runner(session(int8_path, threads=threads, optimize=False))
        kernels = count_kernels(onnx.load(str(int8_path), load_external_data=False))
    else:
        opt = tmp / f"{int8_path.stem}.opt.onnx"
        int8 = Runner(session(int8_path, threads=threads, optimized_path=opt))
        kernels = count_kernels(onnx.load(str(opt), load_external_data=False))
    out_name = fp32.output_names[0]
    hits = agree = n = hits_fp32 = 0
    for b in evaluation:
        a, q = fp32(b.feeds, [out_name])[0].argmax(1), int8(b.feeds, [out_name])[0].argmax(1)
        agree += int(np.sum(a == q))
        if b.labels is not None:
            hits += int(np.sum(q == b.labels))
            hits_fp32 += int(np.sum(a == b.labels))
        n += len(a)
    first = evaluation[0].feeds
    lat = {}
    for bs in batch_sizes:
        feeds = {k: np.ascontiguousarray(np.concatenate([v] * bs)[:bs]) for k, v in first.items()}
        t = interleaved({"fp32": lambda: fp32(feeds), "int8": lambda: int8(feeds)}, 10, iterations)  # noqa: B023
        lat[bs] = (float(np.median(t["fp32"])), float(np.median(t["int8"])))
    return {"top1": hits / n, "fp32_top1": hits_fp32 / n, "agree": agree / n, "n": n, "latency": lat,
            "int8_kernels": kernels["int8_weighted"], "fp32_kernels": kernels["fp32_weighted"]}


def run_model(name, fp32_path, data_spec, trtq_job, cal_count, cal_bs, eval_skip, eval_count, eval_bs,
              batch_sizes, iterations, tmp: Path, threads) -> list[tuple[str, dict | str]]:
    model = load_model(fp32_path)
    if model.opset_import[0].version != onnx.load(str(fp32_path), load_external_data=False).opset_import[0].version:
        # the peers get the same opset-13 upgrade trtq makes (ORT's own upgrade of mnist-8 to 11 fails)
        fp32_path = tmp / f"{name}.opset13.onnx"
        onnx.save(model, str(fp32_path))
    calib = _data(data_spec, model, 0, cal_count, cal_bs)
    evaluation = _data(data_spec, model, eval_skip, eval_count, eval_bs)
    rows: list[tuple[str, dict | str]] = []
    t0 = time.perf_counter()
    path = _trtq_build(trtq_job, tmp)
    build_s = time.perf_counter() - t0
    rows.append(("trtq (percentile, ORT engine)", {**_measure(model, path, evaluation, iterations, batch_sizes, tmp, threads,
                                                             preoptimized=True), "build_s": build_s}))
    for config in ("U8S8 MinMax", "U8S8 Percentile", "S8S8 symmetric (TensorRT-style)"):
        out = tmp / f"{name}_ort_{config.split()[0]}_{config.split()[1]}.onnx"
        t0 = time.perf_counter()
        try:
            _ort_quantize(fp32_path, out, calib, config)
        except Exception as exc:  # noqa: BLE001 - report the peer's failure in the table
            where = traceback.extract_tb(exc.__traceback__)[-1].name
            rows.append((f"ORT quantize_static {config}",
                         f"failed in ORT's {where}: {exc.__class__.__name__}: {str(exc)[:70]}"))
            continue
        build_s = time.perf_counter() - t0
        rows.append((f"ORT quantize_static {config}",
                     {**_measure(model, out, evaluation, iterations, batch_sizes, tmp, threads), "build_s": build_s}))
    if importlib.util.find_spec("modelopt") is None:
        rows.append(("NVIDIA ModelOpt ONNX PTQ", "not installed (needs torch + onnxruntime-gpu; pip install nvidia-modelopt[onnx])"))
    else:
        rows.append(("NVIDIA ModelOpt ONNX PTQ", _modelopt(fp32_path, calib, model, evaluation, iterations, batch_sizes, tmp, threads)))
    return rows


def _modelopt(fp32_path, calib, model, evaluation, iterations, batch_sizes, tmp, threads):
    try:
        from modelopt.onnx.quantization import quantize

        cal = {k: np.concatenate([b.feeds[k] for b in calib]) for k in calib[0].feeds}
        out = tmp / "modelopt.onnx"
        t0 = time.perf_counter()
        quantize(str(fp32_path), calibration_data=cal, calibration_method="entropy", output_path=str(out),
                 calibration_eps=["cpu"], high_precision_dtype="fp32")
        return {**_measure(model, out, evaluation, iterations, batch_sizes, tmp, threads), "build_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001
        return f"failed: {exc.__class__.__name__}: {str(exc)[:80]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.md")
    args = ap.parse_args(argv)
    eff, imgs = args.shared / "models" / "efficientnet_lite0.onnx", args.shared / "data" / "imagenet-sample-500"
    mnist, mnist_data = args.shared / "models" / "mnist-8.onnx", args.shared / "data" / "mnist"
    if not all(p.exists() for p in (eff, imgs, mnist, mnist_data)):
        print(f"skipped: the benchmark needs the project's shared data under {args.shared}")
        return 0
    import os

    os.environ["TRTQ_MNIST_DIR"] = str(mnist_data)
    cpu = cpu_info()
    lines = [f"# trtq vs peers — {time.strftime('%Y-%m-%d')}", "",
             f"Machine: {cpu['cpu']}, {os.cpu_count()} CPUs, AVX2 {cpu['avx2']}, VNNI {cpu['vnni']}; "
             f"onnxruntime {cpu['onnxruntime']}, Python {platform.python_version()}; intra-op threads: "
             f"{args.threads or 'onnxruntime default'}. Latency: medians of {args.iterations} iterations, "
             "INT8 and FP32 interleaved in the same loop; speed-up = FP32 / INT8.", ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        eff_job = {"name": "eff", "model": str(eff), "calibration": {"path": str(imgs), "preprocess": PREPROCESS,
                   "batch_size": 10, "max_samples": 100}}
        mnist_job = {"name": "mnist", "model": str(mnist), "calibration": {
            "loader": f"{ROOT / 'examples' / 'mnist_idx.py'}:test_set", "batch_size": 1, "max_samples": 1000}}
        suites = [
            ("EfficientNet-Lite0, 400 held-out ImageNet photos", run_model(
                "eff", eff, {"path": str(imgs), "preprocess": PREPROCESS}, eff_job, 100, 10, 100, None, 8, (1, 8),
                args.iterations, tmp, args.threads)),
            ("MNIST CNN, 10,000 test images (fixed batch 1)", run_model(
                "mnist", mnist, {"loader": f"{ROOT / 'examples' / 'mnist_idx.py'}:test_set"}, mnist_job, 1000, 1, 0,
                None, 1, (1,), args.iterations, tmp, args.threads)),
        ]
    for title, rows in suites:
        base = next(r for _, r in rows if isinstance(r, dict))
        lines += [f"## {title}", "", f"FP32 top-1: {100 * base['fp32_top1']:.2f} % ({base['n']} images)", "",
                  "| tool | INT8 top-1 | Δ vs FP32 | agreement | bs1 FP32 → INT8 ms | bs1 speed-up | bs8 FP32 → INT8 ms "
                  "| bs8 speed-up | INT8 / FP32 weighted kernels | build s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for tool, r in rows:
            if isinstance(r, str):
                lines.append(f"| {tool} | {r} | | | | | | | | |")
                continue
            l1 = r["latency"][1]
            l8 = r["latency"].get(8)
            bs8 = (f"{l8[0]:.2f} → {l8[1]:.2f} | {l8[0] / l8[1]:.2f}×" if l8 else "— | —")
            lines.append(f"| {tool} | {100 * r['top1']:.2f} % | {100 * (r['top1'] - r['fp32_top1']):+.2f} | "
                         f"{100 * r['agree']:.2f} % | {l1[0]:.2f} → {l1[1]:.2f} | {l1[0] / l1[1]:.2f}× | {bs8} | "
                         f"{r['int8_kernels']} / {r['fp32_kernels']} | {r['build_s']:.1f} |")
        lines.append("")
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
