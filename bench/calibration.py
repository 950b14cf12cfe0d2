"""Calibration benchmark: trtq's streaming statistics against ONNX Runtime's quantize_static.

    python bench/calibration.py [--images DIR] [--model PATH] [--counts 100 500]

Every row runs in a fresh subprocess (so peak RSS is that run's own), one after another on
the same machine, over the same images with the same preprocessing (EfficientNet-Lite0:
shorter side 256 bicubic, crop 224, (x-127)/128), batch 8:

* ``fp32 pass``   — trtq's data pipeline + one plain FP32 inference pass (the yardstick);
* ``trtq``        — one collection pass, the second pass entropy needs (its exact 2048-bin
                    histograms), then all four methods (minmax, percentile, entropy,
                    mse) from the same statistics; ``NCHW exposure`` reads every activation in
                    NCHW order (ONNX Runtime reorders each one from its NCHWc layout: trtq
                    before it read them in that layout — the same statistics); ``stride 4``
                    histograms every 4th value;
* ``ort MinMax`` / ``ort Entropy`` — ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel), whose time is almost all calibration. Run under an address-space limit
  (``--ort-limit-gb``) so its keep-every-activation calibrators cannot exhaust the machine.

The fp32 and trtq rows run ``--repeats`` times, interleaved, and report the median (the
machine is noisy); the ratio is that of the medians. Prints a Markdown table and writes it to
bench/results/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import EFFNET, IMAGES, ROOT, effnet_setup, missing_shared, publish

BATCH = 8


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spec_and_model(args):
    return effnet_setup(args.images, args.model, BATCH, args.n, args.stride)


def _batches(spec, inputs):
    from trtq.data.sources import batches, open_source, prefetch

    return prefetch(batches(open_source(spec, inputs, "calibration"), inputs, spec.batch_size, "calibration", 0,
                            spec.max_samples))


def worker_fp32(args) -> dict:
    from trtq.runtime.onnxruntime import Runner, session

    spec, model, inputs, _ = _spec_and_model(args)
    run = Runner(session(model))
    t0 = time.perf_counter()
    n = 0
    for b in _batches(spec, inputs):
        run(b.feeds)
        n += len(b)
    return {"seconds": time.perf_counter() - t0, "samples": n}


def worker_trtq(args) -> dict:
    import hashlib

    from trtq.calib.collect import group_tensors
    from trtq.calib.methods import BUILTIN, compute_ranges
    from trtq.calib.shards import collect_range

    spec, model, inputs, plan = _spec_and_model(args)
    groups = group_tensors(model, plan.activations, spec.batch_size, spec.memory_budget_mb << 20)
    t0 = time.perf_counter()  # trtq's own collection path, data fingerprint included, as a build runs it
    stats, n, _ = collect_range(model, groups, plan.channel_axes(), spec, inputs, 0, spec.max_samples, hashlib.sha256(),
                             native=not args.nchw)
    collected = time.perf_counter() - t0
    exact = collect_range(model, groups, plan.channel_axes(), spec, inputs, 0, spec.max_samples, None,
                          native=not args.nchw, exact={t: st.absmax for t, st in stats.items() if st.absmax > 0})[0]
    for t, h in exact.items():
        stats[t].attach_exact(h, t)
    exact_seconds = time.perf_counter() - t0 - collected
    methods = {}
    for name, cls in BUILTIN.items():
        t = time.perf_counter()
        compute_ranges(stats, cls())
        methods[name] = time.perf_counter() - t
    return {"seconds": time.perf_counter() - t0, "collect_seconds": collected, "exact_seconds": exact_seconds,
            "methods": methods, "samples": n,
            "passes": len(groups)}


def worker_ort(args, method: str) -> dict:
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    spec, _, inputs, _ = _spec_and_model(args)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_batches(spec, inputs))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {k: np.ascontiguousarray(v) for k, v in b.feeds.items()}

    out = Path(args.tmp) / f"ort_{method}.onnx"
    t0 = time.perf_counter()
    quantize_static(str(args.model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=getattr(CalibrationMethod, method))
    seconds = time.perf_counter() - t0
    onnx.checker.check_model(str(out))
    return {"seconds": seconds, "samples": args.n}


def _median(results: list[dict]) -> dict:
    """The run with the median wall time (its own numbers throughout), with every run's time."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    ok.sort(key=lambda r: r["seconds"])
    return {**ok[(len(ok) - 1) // 2], "all": [r["seconds"] for r in results if "error" not in r]}


def run_worker(args, name: str, n: int, stride: int = 1, limit_gb: float | None = None, nchw: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--stride", str(stride),
           "--images", str(args.images), "--model", str(args.model), "--tmp", str(args.tmp)]
    if nchw:
        cmd.append("--nchw")
    if limit_gb:
        cmd += ["--limit-gb", str(limit_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not last.startswith("{"):
        lines = proc.stderr.strip().splitlines() or ["?"]
        err = next((ln for ln in reversed(lines) if "Error" in ln or "Fail" in ln), lines[-1])[:160]
        if "bad_alloc" in proc.stderr or "MemoryError" in proc.stderr or "Failed to allocate" in proc.stderr:
            err = f"out of memory under the {limit_gb:g} GB limit ({err[:80]})"
        return {"error": err}
    return json.loads(last)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--model", type=Path, default=EFFNET)
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--ort-limit-gb", type=float, default=12.0)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each fp32/trtq row (median reported)")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.md")
    ap.add_argument("--only-ort", action="store_true", help="(debugging) only the ORT rows")
    ap.add_argument("--tmp", default="/tmp")
    # worker mode
    ap.add_argument("--worker")
    ap.add_argument("--n", type=int)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--limit-gb", type=float)
    ap.add_argument("--nchw", action="store_true", help="(worker) read activations in NCHW order")
    args = ap.parse_args(argv)

    if args.worker:
        if args.limit_gb:
            lim = int(args.limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        if args.worker == "warm":  # compile the folding kernel (or load it from numba's cache)
            t0 = time.perf_counter()
            import numpy as np

            from trtq.calib.methods import MSE, Entropy
            from trtq.calib.stats import ExactHistogram, TensorStats
            TensorStats(1).update(np.ones((1, 2, 3), np.float32))
            warmed = TensorStats(1)
            warmed.update(np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 8, 4, 8), block=8)
            exact = ExactHistogram(warmed.absmax)
            exact.update(np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 8, 4, 8), block=8)
            warmed.attach_exact(exact)
            Entropy().compute_amax(warmed), MSE().compute_amax(warmed)
            res = {"seconds": time.perf_counter() - t0, "samples": 0}
        elif args.worker == "fp32":
            res = worker_fp32(args)
        elif args.worker == "trtq":
            res = worker_trtq(args)
        else:
            res = worker_ort(args, args.worker.removeprefix("ort-"))
        res["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(res))
        return 0

    if missing_shared(args.images, args.model):
        return 0
    rows = []
    # the kernel is compiled once per installation (numba caches it); the rows below load it
    warm = run_worker(args, "warm", 0)
    warm_note = (f"Compiled code (folding kernels, entropy and MSE searches): {warm['seconds']:.1f} s to compile or "
                 "load from numba's cache before the rows below (a first run on a machine compiles it; later runs "
                 "load it).")
    variants = [("fp32 pass (yardstick)", "fp32", {})]
    if not args.only_ort:
        variants += [("trtq, 4 methods", "trtq", {}), ("trtq, 4 methods, NCHW exposure", "trtq", {"nchw": True}),
                     ("trtq, 4 methods, stride 4", "trtq", {"stride": 4})]
    for n in args.counts:
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for _ in range(max(1, args.repeats)):  # interleaved, so drifts of the machine hit every row alike
            for name, worker, kw in variants:
                runs[name].append(run_worker(args, worker, n, **kw))
        fp32 = _median(runs["fp32 pass (yardstick)"])
        for name, _, _ in variants:
            rows.append((name, n, _median(runs[name]), None if name.startswith("fp32") else fp32))
        if not args.skip_ort:
            # ORT's histogram calibrators stack every batch's outputs and fail on a short last
            # batch, so ORT gets whole batches only
            n_ort = n - n % BATCH
            for m in ("MinMax", "Entropy"):
                rows.append((f"ort quantize_static {m}", n_ort,
                             run_worker(args, f"ort-{m}", n_ort, limit_gb=args.ort_limit_gb), fp32))
    lines = [f"Calibration of EfficientNet-Lite0, batch {BATCH}, {os.cpu_count()} CPUs "
             f"({time.strftime('%Y-%m-%d')}); each run a fresh process; fp32 and trtq rows: median of "
             f"{max(1, args.repeats)} interleaved runs (all runs in brackets), ORT rows: one run.", "",
             warm_note, "",
             "| run | images | wall s | × fp32 pass (per image) | peak RSS MB | method times (s) |", "|---|---|---|---|---|---|"]
    for name, n, r, base in rows:
        if "error" in r:
            lines.append(f"| {name} | {n} | failed: {r['error']} | | | |")
            continue
        # the yardstick ran over `base['samples']` images: compare per image
        ratio = (f"{(r['seconds'] / r['samples']) / (base['seconds'] / base['samples']):.2f}"
                 if base and "seconds" in base else "1.00")
        meth = ", ".join(f"{k} {v:.2f}" for k, v in r.get("methods", {}).items())
        if "collect_seconds" in r:
            meth = f"collect {r['collect_seconds']:.1f}; exact histograms {r['exact_seconds']:.1f}; " + meth
        wall = f"{r['seconds']:.1f}" + (f" ({', '.join(f'{x:.1f}' for x in r['all'])})" if len(r.get("all", [])) > 1 else "")
        lines.append(f"| {name} | {n} | {wall} | {ratio} | {r['peak_rss_mb']:.0f} | {meth} |")
    trtq = {n: r for name, n, r, _ in rows if name == "trtq, 4 methods" and "error" not in r}
    if len(trtq) >= 2:
        lo, hi = min(trtq), max(trtq)
        lines += ["", f"trtq peak RSS with {hi} images / with {lo} images: "
                      f"{trtq[hi]['peak_rss_mb'] / trtq[lo]['peak_rss_mb']:.3f}"]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
