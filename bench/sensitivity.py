"""Which layers to keep in float for an accuracy target: measured sensitivity against the per-layer
noise ranking and a prefix bisection (as Polygraphy's `debug precision --mode bisect` does it).

    python bench/sensitivity.py            # writes bench/results/sensitivity.md (a few minutes)

On the PP-OCRv4 recogniser and detector (../shared/models) with rendered text (examples/ocr_data.py,
made here in a temporary folder: calibration on the first samples, the selection and the
confirmation splits on the samples after them), each job's default build misses a target; each
strategy picks the float layers that meet it on the selection split:

* measured — the build's search: layers ranked by the engine's task metric with only that layer in
  float, the top k grown 1, 2, 4, … and bisected, then pruned (`quantization.accuracy_target`);
* measured, no prune — the same ranking and k, no pruning;
* measured, ranked by output SQNR — the same measurements, ranked by the output SQNR each layer's
  float restores instead of the task metric (finer-grained on few samples);
* noise — the same search over the per-layer "noise added" ranking (`per_layer` in report.json);
* prefix / suffix bisection — layers in graph order, the first (last) k in float, k bisected.

Every candidate is the ONNX Runtime engine the build would ship, scored against FP32 outputs held in
memory; the latencies (batch 1, FP32 and every chosen engine interleaved in one process, under
`flock /tmp/trtq-bench.lock`) give the INT8 speed-up that remains.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SHARED, missing_shared, publish

sys.path.insert(0, str(ROOT / "examples"))

from trtq.calib.calibrate import calibrate  # noqa: E402
from trtq.evaluation.evaluate import latency_feeds, per_layer_analysis  # noqa: E402
from trtq.evaluation.latency import interleaved  # noqa: E402
from trtq.evaluation.sensitivity import ranking  # noqa: E402
from trtq.job import load_job  # noqa: E402
from trtq.model.prepare import prepare_job  # noqa: E402
from trtq.pipeline import budget  # noqa: E402
from trtq.pipeline.build import equalize  # noqa: E402
from trtq.pipeline.variants import ort_engine_file  # noqa: E402
from trtq.progress import Progress  # noqa: E402
from trtq.runtime.onnxruntime import cpu_info  # noqa: E402

LOCK = Path("/tmp/trtq-bench.lock")
TIMED = 30  # interleaved rounds per engine at batch 1

# (name, job, data folder, samples: calibration, selection, confirmation, sensitivity; target)
CASES = [
    ("PP-OCRv4 rec", "ppocr_rec.yaml", "lines", (32, 32, 32, 32), {"metric": "cer", "maximum": 0.01}),
    ("PP-OCRv4 det", "ppocr_det.yaml", "pages", (8, 8, 8, 4), {"metric": "mask_iou", "minimum": 0.98}),
]


def job_for(config: str, data: Path, counts: tuple[int, int, int, int], target: dict):
    cal, sel, conf, sens = counts
    t = "{" + ", ".join(f"{k}: {v}" for k, v in target.items()) + "}"
    sets = [f"calibration.path={data}", f"calibration.max_samples={cal}", f"evaluation.path={data}",
            f"evaluation.skip={cal}", f"evaluation.max_samples={sel + conf}", f"evaluation.per_layer_samples={sens}",
            f"evaluation.sensitivity.samples={sens}", "evaluation.sensitivity.time_budget_s=1200",
            f"quantization.accuracy_target={t[:-1]}, selection_samples: {sel}, confirmation_samples: {conf}, "
            "max_steps: 40}"]
    return load_job(ROOT / "configs" / "real" / config, sets)


def bisect_prefix(steps: budget.Steps, order: list[str], label: str) -> list[str]:
    """The smallest k whose first k layers of ``order`` in float meet the target (k = all is FP32)."""
    lo, hi = 0, len(order)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if steps.try_(label, order[:mid]):
            hi = mid
        else:
            lo = mid
    return order[:hi]


def noise_order(s: budget.Search, layers: list[tuple[str, str]], progress: Progress) -> list[str]:
    """Weighted ops by the relative noise they add (most first), then the layers it does not rank."""
    with tempfile.TemporaryDirectory() as tmp:
        _, qdq = ort_engine_file(s.job, s.prepared, s.ranges, s.variants.means, Path(tmp) / "e.onnx", s.variants.cpu)
    rows = per_layer_analysis(s.prepared, s.spec, qdq, progress)["layers"]
    ranked = [r["node"] for r in sorted(rows, key=lambda r: -r["added_noise"])]
    return ranked + [n for n, _ in layers if n not in set(ranked)]


def strategies(s: budget.Search, select, target, progress: Progress) -> tuple[dict, list[dict], float]:
    """Each strategy's float layers and the candidates it scored; the target's threshold."""
    metric = target.metric
    fp32_value = select.score(None)[metric]
    op, threshold = budget.bound(target, fp32_value)
    layers = budget.quantized_layers(s.prepared)
    position = {node.name: i for i, node in enumerate(s.prepared.model.graph.node)}
    graph = sorted((n for n, _ in layers), key=position.__getitem__)
    out, first_steps = {}, None
    t0 = time.perf_counter()
    print(f"  measuring the sensitivity of {len(layers)} layers …", flush=True)
    sens = budget.measure_sensitivity(s, metric)
    sens_s = time.perf_counter() - t0
    by_sqnr = [r["node"] for r in sorted(sens["layers"], key=lambda r: -r["sqnr_gain_db"])]
    for name, order in (("measured", ranking(sens)), ("measured, ranked by output SQNR", by_sqnr),
                        ("noise", noise_order(s, layers, progress)),
                        ("prefix bisection", graph), ("suffix bisection", graph[::-1])):
        # only the build's own search times its candidates (its table of steps); the picks are timed together below
        steps = budget.Steps(s, select, metric, op, threshold, target.max_steps if name == "measured" else 10_000,
                             timed=name == "measured")
        print(f"  {name} …", flush=True)
        t0 = time.perf_counter()
        if not steps.try_("all INT8", []):
            chosen = (budget.grow(steps, order) if "bisection" not in name
                      else bisect_prefix(steps, order, "bisect"))
        else:
            chosen = []
        # every layer in float is FP32 itself: known to meet the target, never built
        known = steps.seen.get(frozenset(chosen), {"metric": fp32_value})["metric"]
        out[name] = {"layers": chosen, "candidates": len(steps.rows), "seconds": time.perf_counter() - t0,
                     "metric": known}
        print(f"  {name}: {len(chosen)} layers in float, {metric} {known:.4g}, {len(steps.rows)} candidates, "
              f"{out[name]['seconds']:.0f} s", flush=True)
        if name == "measured":
            pruned = budget.prune(steps, chosen)
            out["measured + prune (the build)"] = {"layers": pruned, "candidates": len(steps.rows),
                                                   "seconds": time.perf_counter() - t0 + sens_s,
                                                   "metric": steps.seen[frozenset(pruned)]["metric"]}
            out[name]["seconds"] += sens_s
            first_steps = steps.rows
    return out, first_steps, (op, threshold, sens)


def confirm_and_time(s: budget.Search, picks: dict, conf, metric: str) -> None:
    """Each pick's metric on the confirmation split, then every engine timed interleaved with FP32."""
    feeds = latency_feeds(conf.feeds(), 1, s.prepared.inputs)
    engines = {}
    with contextlib.ExitStack() as stack:
        for name, p in [("all INT8", {"layers": []})] + list(picks.items()):
            # each engine is loaded into its session before the next one is written over its file
            eng = stack.enter_context(s.variants.engine(s.ranges, p["layers"]))
            p["confirmation"] = conf.score(eng)[metric]
            engines[name] = eng
        calls = {"FP32": lambda: s.fp32(feeds)}
        calls.update({n: (lambda e=e: e(feeds)) for n, e in engines.items()})
        LOCK.touch(exist_ok=True)
        with LOCK.open() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            times = interleaved(calls, 3, TIMED)
    fp32 = float(np.median(times["FP32"]))
    for name, p in picks.items():
        p["ratio"] = float(np.median(times[name])) / fp32
    picks["_all_int8"] = {"ratio": float(np.median(times["all INT8"])) / fp32, "fp32_ms": fp32}


def run_case(name: str, config: str, data: Path, counts, target_d: dict) -> list[str]:
    progress = Progress()
    job = job_for(config, data, counts, target_d)
    target = job.quantization.accuracy_target
    prepared, _ = equalize(job, prepare_job(job), progress)
    cal = calibrate(prepared, job.calibration, job.calibrator, progress)
    s = budget.Search(job, prepared, cal, cpu_info(), None, progress)
    try:
        select = s.split(0, target.selection_samples)
        conf = s.split(target.selection_samples, target.confirmation_samples)
        picks, steps, (op, threshold, sens) = strategies(s, select, target, progress)
        confirm_and_time(s, picks, conf, target.metric)
    finally:
        s.variants.close()
    base = picks.pop("_all_int8")
    all_int8 = steps[0]["metric"]
    total = len(budget.quantized_layers(prepared))
    lines = [f"## {name}: `{target.metric}` {op} {threshold:g}", "",
             f"{total} quantized layers; selection {select.samples} samples (from sample {select.skip}), "
             f"confirmation {conf.samples} (from {conf.skip}), sensitivity measured on {sens['samples']} of the "
             f"selection samples in {sens['seconds']:.0f} s. Every layer INT8 (the default build): "
             f"{all_int8:.4g} on the selection split — misses the target; INT8/FP32 latency {base['ratio']:.2f}× "
             f"(FP32 {base['fp32_ms']:.1f} ms at batch 1).", "",
             *([f"INT8 is slower than FP32 on this engine even with every layer in INT8 ({base['ratio']:.2f}×): "
                "the latency column compares slow-downs, not speed-ups, and is within this machine's noise.", ""]
               if base["ratio"] > 1 else []),
             "| strategy | layers in float | selection | confirmation | INT8/FP32 latency | candidates scored | s |",
             "|---|---|---|---|---|---|---|"]
    for strat, p in picks.items():
        lines.append(f"| {strat} | {len(p['layers'])} | {p['metric']:.4g} | {p['confirmation']:.4g} | "
                     f"{p['ratio']:.2f}× | {p['candidates']} | {p['seconds']:.0f} |")
    best = picks["measured + prune (the build)"]
    lines += ["", "Float layers kept by the build's search: " + ", ".join(f"`{n}`" for n in best["layers"]), "",
              "The build's search, step by step (latency: INT8 candidate / FP32, 10 interleaved runs each):", "",
              "| step | phase | layers in float | metric | meets | latency |", "|---|---|---|---|---|---|"]
    for r in steps:
        ratio = "—" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}×"
        lines.append(f"| {r['step']} | {r['phase']} | {r['count']} | {r['metric']:.4g} | "
                     f"{'yes' if r['meets'] else 'no'} | {ratio} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sensitivity.md")
    args = ap.parse_args()
    if missing_shared(SHARED / "models" / "ch_PP-OCRv4_rec_infer.onnx", SHARED / "models" / "ch_PP-OCRv4_det_infer.onnx"):
        return
    import ocr_data

    tmp = Path(tempfile.mkdtemp(prefix="trtq-sens-"))
    ocr_data.write(tmp / "ocr", pages=24, lines=96)
    sections = []
    t0 = time.perf_counter()
    for name, config, folder, counts, target in CASES:
        print(name, flush=True)
        sections += run_case(name, config, tmp / "ocr" / folder, counts, target)
        print("\n".join(sections[-12:]), flush=True)
    m = cpu_info()
    text = "\n".join([
        f"# Picking the float layers for an accuracy target — {time.strftime('%Y-%m-%d')}", "",
        f"Machine: {m['cpu']}, {os.cpu_count()} CPUs, AVX2 {m['avx2']}, VNNI {m['vnni']}; onnxruntime "
        f"{m['onnxruntime']}, Python {platform.python_version()}. `python bench/sensitivity.py` "
        f"({time.perf_counter() - t0:.0f} s in all). Engines: ONNX Runtime INT8 (CPU); metric against FP32's outputs.",
        "", *sections])
    publish(text, args.out)


if __name__ == "__main__":
    main()
