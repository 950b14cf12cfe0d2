"""PTQ refinements measured on the models where INT8 loses most: exact vs interpolated entropy,
cross-layer equalization and AdaRound, each on/off, on the PP-OCRv4 detector and recogniser
and EfficientNet-Lite0 (ONNX Runtime INT8 engine against the FP32 model).

    python examples/ocr_data.py data/ocr     # once: rendered pages and text lines
    python bench/refinements.py              # writes bench/results/refinements.md

Task metrics against FP32: detector — IoU of the text masks (probability > 0.3); recogniser —
CTC greedy-decoded strings identical to FP32's; EfficientNet — top-1 on labelled ImageNet
photos. Output SQNR over all evaluation samples. Build time: calibration + refinements + Q/DQ +
engine, with the statistics collected afresh (so the entropy rows include their second pass).
Sample counts are kept small so the whole table takes minutes on two cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import IMAGES, ROOT, SHARED, missing_shared, publish

from trtq.api import build, load_job
from trtq.calib import methods
from trtq.calib.methods import Entropy, kl_threshold, rebin
from trtq.data.sources import batches, open_source
from trtq.engine.onnxruntime import load_engine
from trtq.evaluation.metrics import sqnr_db
from trtq.model.prepare import prepare_job
from trtq.runtime.onnxruntime import Runner, session

OUT = ROOT / "bench" / "results" / "refinements.md"


class InterpolatedEntropy:
    """The entropy trtq had before the exact second pass: the 2048-bin view interpolated from
    the fine power-of-two histogram (kept here only to measure the difference)."""

    def compute_amax(self, stats) -> float:
        hist, width = rebin(stats)
        return 0.0 if width == 0 else kl_threshold(hist) * width


MODELS = {
    "PP-OCRv4 det": (ROOT / "configs/real/ppocr_det.yaml", ["calibration.max_samples=8", "evaluation.skip=8",
                                                             "evaluation.max_samples=8"], "mask"),
    "PP-OCRv4 rec": (ROOT / "configs/real/ppocr_rec.yaml", ["calibration.max_samples=32", "evaluation.skip=32",
                                                             "evaluation.max_samples=32"], "ctc"),
    "EfficientNet-Lite0": (ROOT / "configs/efficientnet_lite0.yaml", [
        f"model={SHARED / 'models/efficientnet_lite0.onnx'}", f"calibration.path={IMAGES}",
        "calibration.max_samples=64", f"evaluation.path={IMAGES}", "evaluation.skip=64",
        "evaluation.max_samples=200"], "top1"),
}
VARIANTS = {
    "percentile (default)": [],
    "+ cross-layer equalization": ["quantization.cross_layer_equalization=true"],
    "+ AdaRound": ["quantization.adaround=true"],
    "entropy, interpolated (old)": ["calibrator.method=entropy", "old"],
    "entropy, exact (new)": ["calibrator.method=entropy"],
}


def ctc_strings(logits: np.ndarray) -> list[tuple]:
    """Greedy CTC decode of [B, T, classes] (blank = 0): argmax, collapse repeats, drop blanks."""
    out = []
    for seq in logits.argmax(-1):
        keep = np.concatenate([[True], seq[1:] != seq[:-1]]) & (seq != 0)
        out.append(tuple(seq[keep].tolist()))
    return out


def task_metric(kind: str, ref: np.ndarray, got: np.ndarray, labels) -> float:
    if kind == "mask":
        a, b = ref > 0.3, got > 0.3
        return float((a & b).sum() / max(1, (a | b).sum()))
    if kind == "ctc":
        return float(np.mean([x == y for x, y in zip(ctc_strings(ref), ctc_strings(got))]) * 100)
    return float(np.mean(got.reshape(len(got), -1).argmax(1) == labels) * 100)


def measure(job, folder: Path, kind: str) -> tuple[float, float, float]:
    """(INT8 task metric, output SQNR, FP32 task metric) on the evaluation samples."""
    prepared = prepare_job(job)
    fp32 = Runner(session(prepared.model))
    int8 = load_engine(folder / "engine.ort.onnx")
    refs, gots, labels = [], [], []
    spec = job.evaluation
    for batch in batches(open_source(spec, prepared.inputs, "evaluation"), prepared.inputs, spec.batch_size,
                         "evaluation", spec.skip, spec.max_samples):
        refs.append(fp32(batch.feeds)[0])
        gots.append(int8(batch.feeds)[0])
        labels.append(batch.labels if batch.labels is not None else np.zeros(len(batch), int))
    if kind == "mask":  # pages differ in size: IoU over all pixels, SQNR over all values
        flat = lambda xs: np.concatenate([x.ravel() for x in xs])  # noqa: E731
        return task_metric(kind, flat(refs), flat(gots), None), sqnr_db(flat(refs), flat(gots)), 1.0
    ref, got, labels = np.concatenate(refs), np.concatenate(gots), np.concatenate(labels)
    return task_metric(kind, ref, got, labels), sqnr_db(ref, got), task_metric(kind, ref, ref, labels)


def run_one(config: Path, overrides: list[str], kind: str, root: Path) -> dict:
    old = "old" in overrides  # entropy as it was: swapped in for this build only
    job = load_job(config, [o for o in overrides if o != "old"])
    methods.BUILTIN["entropy"] = InterpolatedEntropy if old else Entropy
    build_job = job.model_copy(update={"evaluation": None})
    t0 = time.perf_counter()
    result = build(build_job, root, force=True)
    seconds = time.perf_counter() - t0
    metric, sqnr, fp32 = measure(job, result.out_dir, kind)
    ranges = json.loads((result.out_dir / "ranges.json").read_text())["tensors"]
    q = result.report["quantization"]
    cle = q.get("cross_layer_equalization") or {}
    ada = next(iter((q.get("adaround") or {}).values()), {})
    cal = result.report["calibration"]
    return {"metric": metric, "sqnr": sqnr, "fp32": fp32, "seconds": seconds, "pairs": cle.get("pairs"),
            "amax": {t: r["amax"] for t, r in ranges.items()}, "first_s": cal["collect_seconds"],
            "samples": cal["samples"],
            "ada": ada.get("error_vs_nearest"),
            "exact_s": cal.get("exact_histogram_seconds", 0.0)}


def moved(old: dict[str, float], new: dict[str, float]) -> str:
    """How many tensors' entropy amax the exact histogram moved by more than 1 %."""
    change = np.array([abs(new[t] / old[t] - 1) for t in old if old[t] > 0])
    return (f"exact vs interpolated entropy: {int((change > 0.01).sum())} of {len(change)} tensors' amax moved "
            f"by more than 1 %, {int((change > 0.05).sum())} by more than 5 % (largest {100 * change.max():.1f} %)")


def main() -> None:
    needs = [SHARED / "models/ch_PP-OCRv4_det_infer.onnx", ROOT / "data/ocr/pages", IMAGES]
    if missing_shared(*needs):
        return
    metric_names = {"mask": "mask IoU@0.3 vs FP32", "ctc": "strings = FP32 %", "top1": "top-1 %"}
    lines = ["# PTQ refinements: exact entropy, cross-layer equalization, AdaRound", "",
             "`python bench/refinements.py` — ONNX Runtime INT8 engine vs the FP32 model; AMD EPYC "
             "(AVX-512 VNNI), 2 cores shared with other work (build times are indicative). Evaluated on "
             "8 rendered pages (det), 32 text lines (rec) and 200 ImageNet photos (EfficientNet-Lite0) "
             "after the calibration samples: one photo is 0.5 points, one line 3 points.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for model, (config, base, kind) in MODELS.items():
            lines += [f"## {model}", "", f"| variant | {metric_names[kind]} | output SQNR | build s | notes |",
                      "|---|---|---|---|---|"]
            runs = {}
            for variant, extra in VARIANTS.items():
                r = runs[variant] = run_one(config, base + extra, kind, Path(tmp))
                if len(runs) == 1:
                    fp32 = f"; the FP32 model's top-1: {r['fp32']:.1f} %" if kind == "top1" else ""
                    lines.insert(len(lines) - 2, f"{r['samples']} calibration samples{fp32}.\n")
                notes = []
                if r["pairs"] is not None:
                    notes.append(f"{r['pairs']} Conv pairs equalized")
                if r["ada"] is not None:
                    notes.append(f"reconstruction error {r['ada']:.2f}× nearest")
                if r["exact_s"]:
                    notes.append(f"second pass {r['exact_s']:.1f} s after the first's {r['first_s']:.1f} s")
                lines.append(f"| {variant} | {r['metric']:.{3 if kind == 'mask' else 1}f} | {r['sqnr']:.2f} dB | "
                             f"{r['seconds']:.1f} | {'; '.join(notes)} |")
                print(lines[-1], flush=True)
            lines += ["", moved(runs["entropy, interpolated (old)"]["amax"], runs["entropy, exact (new)"]["amax"]), ""]
    publish("\n".join(lines), OUT)


if __name__ == "__main__":
    main()
