"""Activation-channel equalization off / on, for every model in ../shared/models.

    python bench/equalize.py            # writes bench/results/equalize.md

Each model is built twice with its job (configs/, configs/real/) on data the repository makes or
../shared holds, `quantization.equalize_channels` false then true; the table gives the narrow-
channel findings, the channels widened, the worst output's SQNR (INT8 engine vs FP32) and the
build time of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, machine_line, missing_shared, publish, worst_sqnr

sys.path.insert(0, str(ROOT / "examples"))

import trtq  # noqa: E402

IMAGES = SHARED / "data" / "imagenet-sample-500"
LIGHT = ["evaluation.per_layer_samples=0", "evaluation.latency.iterations=5", "evaluation.latency.warmup=2"]


def jobs(data: Path) -> list[tuple[str, Path, list[str]]]:
    real = ROOT / "configs" / "real"
    ocr = [f"calibration.path={data}/{{d}}", f"evaluation.path={data}/{{d}}"]
    return [
        ("EfficientNet-Lite0", ROOT / "configs" / "efficientnet_lite0.yaml",
         [f"model={SHARED / 'models' / 'efficientnet_lite0.onnx'}", f"calibration.path={IMAGES}",
          "calibration.max_samples=100", f"evaluation.path={IMAGES}", "evaluation.skip=100",
          "evaluation.max_samples=200", "evaluation.latency.batch_sizes=[1]"]),
        ("MNIST CNN", ROOT / "configs" / "mnist.yaml", ["evaluation.max_samples=1000"]),
        ("PP-OCRv4 det", real / "ppocr_det.yaml", [s.format(d="pages") for s in ocr]),
        ("PP-OCRv4 rec", real / "ppocr_rec.yaml", [s.format(d="lines") for s in ocr]),
        ("PP-OCR cls", real / "ppocr_cls.yaml", [s.format(d="direction") for s in ocr]),
        ("silero-vad v6", real / "silero_vad.yaml", []),
        ("silero-vad op15", real / "silero_vad_op15.yaml", []),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "equalize.md")
    args = ap.parse_args()
    if missing_shared(IMAGES, SHARED / "models"):
        return
    import ocr_data

    os.environ.setdefault("TRTQ_VAD_SECONDS", "24")
    tmp = Path(tempfile.mkdtemp(prefix="trtq-eq-"))
    ocr_data.write(tmp / "ocr", pages=8, lines=32)
    rows = []
    for name, path, sets in jobs(tmp / "ocr"):
        cells = {}
        for on in (False, True):
            job = trtq.load_job(path, sets + LIGHT + [f"quantization.equalize_channels={str(on).lower()}"])
            t0 = time.perf_counter()
            rep = trtq.build(job, out=tmp / "engines" / ("on" if on else "off")).report
            cells[on] = (rep, time.perf_counter() - t0)
        off, on = cells[False][0], cells[True][0]
        found = on["quantization"]["narrow_channels"]
        widened = sum(on["quantization"]["equalized"].values())
        found_s = "; ".join(f"`{f['tensor']}` {len(f['channels'])}/{f['of']} ch, cap {f['sqnr_cap_db']:.0f} dB"
                            + (f" → {f['sqnr_cap_after_db']:.0f} dB" if f.get("sqnr_cap_after_db") else "")
                            for f in found) or "none"
        rows.append(f"| {name} | {found_s} | {widened} in {len(on['quantization']['equalized'])} tensors | "
                    f"{worst_sqnr(off):.1f} | {worst_sqnr(on):.1f} | {cells[False][1]:.1f} | {cells[True][1]:.1f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"# Activation-channel equalization off / on — {time.strftime('%Y-%m-%d')}", "",
        f"{machine_line()} `python bench/equalize.py`; one build each.",
        "SQNR: the worst output, INT8 engine (ONNX Runtime) against FP32 on the evaluation data. Findings: "
        "tensors whose narrow channels cap the depthwise output's SQNR below 20 dB (estimated from 16 "
        "calibration samples), before → after equalization.", "",
        "| model | narrow-channel findings | channels widened | SQNR dB off | SQNR dB on | build s off | build s on |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
