"""The sweep of issue #7, end to end: 3 calibrators × (EfficientNet-Lite0, MNIST CNN) from one
command, locally and through a local Ray instance; artifacts compared byte for byte; a re-run
with nothing changed; EfficientNet-Lite0's calibration split over 4 Ray tasks against one pass.

    python bench/sweep.py [--root /tmp/trtq-sweep-bench]

Needs ../shared (real photos and MNIST). Prints a table and writes bench/results/sweep.md.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRTQ = [sys.executable, "-m", "trtq"]
SWEEPS = ROOT / "configs" / "sweeps"
COMPARED = ("model.int8.onnx", "calibration.cache", "ranges.json", "engine.ort.onnx", "channel_means.npz")


def trtq(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([*TRTQ, *map(str, args)], check=False, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/trtq-sweep-bench")
    args = ap.parse_args()
    root = Path(args.root)
    if not (ROOT.parent / "shared" / "data" / "imagenet-sample-500").is_dir():
        sys.exit("needs ../shared (imagenet-sample-500, mnist); absent here")
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    t = trtq("run", SWEEPS, "--out", root / "local", "-q")
    rows.append(("local, 1 build worker (fresh)", t))
    rows.append(("local re-run, nothing changed", trtq("run", SWEEPS, "--out", root / "local", "-q")))
    rows.append(("Ray (local instance, fresh)", trtq("run", SWEEPS, "--out", root / "ray", "--ray", "local", "-q")))
    rows.append(("Ray re-run, nothing changed", trtq("run", SWEEPS, "--out", root / "ray", "--ray", "local", "-q")))
    summary = json.loads((root / "local" / "summary.json").read_text())
    jobs = [r["job"] for r in summary["jobs"]]
    same = sum(filecmp.cmp(root / "local" / j / f, root / "ray" / j / f, shallow=False) for j in jobs for f in COMPARED)
    t = trtq("run", SWEEPS / "efficientnet_lite0.yaml", "--set", "calibration.shards=4", "--set", "evaluation=null",
             "--out", root / "shards", "--ray", "local", "-q")
    rows.append(("EfficientNet-Lite0 ×3, calibration in 4 Ray shards (no evaluation)", t))
    shard_same = all(
        json.loads((root / "shards" / j / "ranges.json").read_text())["tensors"]
        == json.loads((root / "local" / j / "ranges.json").read_text())["tensors"]
        for j in jobs if j.startswith("effnet"))
    lines = ["| run | wall s |", "|---|---|"] + [f"| {name} | {secs:.1f} |" for name, secs in rows]
    lines += ["", f"artifacts identical local vs Ray: {same} / {len(jobs) * len(COMPARED)} "
              f"({', '.join(COMPARED)} of {len(jobs)} jobs)",
              f"ranges with calibration in 4 Ray shards equal to one pass: {'yes' if shard_same else 'NO'}", "",
              (root / "local" / "summary.md").read_text()]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "sweep.md").write_text(
        "# bench/sweep.py\n\n2-core AMD EPYC (AVX2, no VNNI), onnxruntime 1.32, Ray 2.60 (local instance).\n\n" + text)


if __name__ == "__main__":
    main()
