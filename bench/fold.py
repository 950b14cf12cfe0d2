"""Folding cost per value: trtq's compiled kernel against the numpy expression it replaced.

    python bench/fold.py [--images DIR] [--model PATH] [--repeats 5]

Takes the activations EfficientNet-Lite0 exposes for calibration on one batch of 8 real photos
(60 tensors, ~57 M values), then folds all of them into fresh statistics, on one thread:

* ``numpy``  — min/max, per-channel float64 sums, ``|x| * 2**-e`` → int → ``np.bincount``
               (trtq's fold before the kernel; the width e picked from the batch's max first);
* ``kernel`` — ``TensorStats.update`` (trtq/calib/kernels.py), stride 1 and 4;
* ``kernel, NCHWc`` — the same tensors in ONNX Runtime's channel-blocked order (block 8, as
               calibration reads them; 2-D tensors and the 3-channel input stay NCHW), stride 1.

Checks that both give the same counts, min/max and sums, and prints the median ns per value of
``--repeats`` runs, side by side. Writes the table to bench/results/fold.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from _common import EFFNET, IMAGES, ROOT, effnet_setup, missing_shared, publish


def activations(images: Path, model_path: Path) -> dict[str, tuple[np.ndarray, int | None]]:
    from trtq.runtime.onnxruntime import Runner, session
    from trtq.model.load import expose_tensors
    from trtq.data.sources import batches, open_source

    spec, model, inputs, plan = effnet_setup(images, model_path, 8, 8)
    batch = next(iter(batches(open_source(spec, inputs, "calibration"), inputs, 8, "calibration", 0, 8)))
    names = [t for t in plan.activations if t not in batch.feeds]
    values = dict(zip(names, Runner(session(expose_tensors(model, names)))(batch.feeds, names)))
    values.update({t: batch.feeds[t] for t in plan.activations if t in batch.feeds})
    axes = plan.channel_axes()
    return {t: (np.ascontiguousarray(v, dtype=np.float32), axes.get(t)) for t, v in values.items()}


def _nchwc(x: np.ndarray, block: int) -> np.ndarray:
    """(N, C, H, W) rearranged into ONNX Runtime's NCHWc memory order, still shaped (N, C, H, W)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h * w).transpose(0, 1, 3, 2)).reshape(x.shape)


def numpy_fold(x: np.ndarray, axis: int | None):
    """The numpy statistics of one batch: (exp, counts, min, max, channel sums)."""
    lo, hi = float(x.min()), float(x.max())
    amax = max(-lo, hi)
    exp = -160 if amax == 0 else max(math.frexp(amax)[1] - 14, -160)
    wide = exp <= -100  # 2**-exp must stay a normal float32
    a = np.abs(x, dtype=np.float64 if wide else np.float32)
    a *= a.dtype.type(math.ldexp(1.0, -exp))
    counts = np.bincount(a.astype(np.intp).ravel(), minlength=16384)
    sums = None
    if axis is not None and x.ndim > 1 and axis % x.ndim:
        moved = np.moveaxis(x, axis, 1).reshape(len(x), x.shape[axis], -1)
        sums = moved.sum(axis=2, dtype=np.float64).sum(axis=0)
    return exp, counts, lo, hi, sums


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--model", type=Path, default=EFFNET)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fold.md")
    args = ap.parse_args(argv)
    if missing_shared(args.images, args.model):
        return 0
    from trtq.calib.stats import TensorStats

    acts = activations(args.images, args.model)
    total = sum(x.size for x, _ in acts.values())

    blocked = {t: (_nchwc(x, 8), axis) if x.ndim == 4 and x.shape[1] % 8 == 0 else (x, axis)
               for t, (x, axis) in acts.items()}

    def kernel(stride, data=acts, block=0):
        out = {}
        for t, (x, axis) in data.items():
            st = TensorStats(axis)
            st.update(x, stride, t, block if x.ndim == 4 and x.shape[1] % 8 == 0 else 0)
            out[t] = st
        return out

    # same answers first
    ref = {t: numpy_fold(x, axis) for t, (x, axis) in acts.items()}
    got = kernel(1)
    for t, (exp, counts, lo, hi, sums) in ref.items():
        st = got[t]
        same = st.exp == exp and np.array_equal(st.hist, counts) and (st.min, st.max) == (lo, hi)
        if sums is not None:
            same = same and np.allclose(st.channel_sum, sums, rtol=1e-10)
        if not same:
            print(f"MISMATCH on {t}")
            return 1
    got_blocked = kernel(1, blocked, 8)
    if any(not (got_blocked[t] == got[t]) for t in got):
        print("MISMATCH between the NCHW and NCHWc folds")
        return 1
    rows = [("numpy (before)", lambda: [numpy_fold(x, a) for x, a in acts.values()]),
            ("kernel, stride 1", lambda: kernel(1)), ("kernel, stride 4", lambda: kernel(4)),
            ("kernel, NCHWc layout, stride 1", lambda: kernel(1, blocked, 8))]
    times = {name: [] for name, _ in rows}
    for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit every row alike
        for name, fn in rows:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[rows[0][0]])
    lines = [f"Folding the calibration activations of EfficientNet-Lite0 (one batch of 8 photos, {len(acts)} tensors, "
             f"{total / 1e6:.1f} M values) on one thread, median of {args.repeats} "
             f"({time.strftime('%Y-%m-%d')}). Counts, min/max and channel sums identical.", "",
             "| fold | ns per value | × numpy time |", "|---|---|---|"]
    for name, _ in rows:
        med = statistics.median(times[name])
        lines.append(f"| {name} | {med / total * 1e9:.2f} | {med / base:.2f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
