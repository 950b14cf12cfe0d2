"""What the benchmarks share: the EfficientNet-Lite0 setup over ../shared, the skip message when
that data is absent, and printing a result table and writing it under bench/results/."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "data" / "imagenet-sample-500"
EFFNET = SHARED / "models" / "efficientnet_lite0.onnx"
# EfficientNet-Lite0's preprocessing: shorter side 256 bicubic, crop 224, (x-127)/128
PREPROCESS = {"resize": 256, "interpolation": "bicubic", "crop": 224, "mean": 127, "std": 128}


def missing_shared(*paths: Path) -> bool:
    """Print the skip line and return True when one of ``paths`` is absent."""
    for need in paths:
        if not need.exists():
            print(f"skipped: {need} is absent (the benchmark needs the project's ../shared data)")
            return True
    return False


def effnet_setup(images: Path, model_path: Path, batch: int, max_samples: int | None, stride: int = 1):
    """(calibration DataSpec, model with named nodes, its input specs, its quantization plan)."""
    from trtq.job import DataSpec
    from trtq.model.prepare import prepare

    spec = DataSpec.model_validate({"path": str(images), "preprocess": PREPROCESS, "batch_size": batch,
                                    "max_samples": max_samples, "histogram_stride": stride})
    prepared = prepare(Path(model_path))
    return spec, prepared.model, prepared.inputs, prepared.plan


def machine_line() -> str:
    """The machine and versions every result table names."""
    import os
    import platform

    from trtq.runtime.onnxruntime import cpu_info

    m = cpu_info()
    return (f"Machine: {m['cpu']}, {os.cpu_count()} CPUs, AVX2 {m['avx2']}, VNNI {m['vnni']}; onnxruntime "
            f"{m['onnxruntime']}, Python {platform.python_version()}.")


def worst_sqnr(report: dict) -> float:
    """The worst output's SQNR (INT8 against FP32) in a build's report."""
    acc = report["int8"]["accuracy"]
    by = acc.get("fidelity_by_output") or {"": acc["fidelity"]}
    return min(f["sqnr_db"] for f in by.values())


def publish(text: str, out: Path) -> None:
    """Print a result table and write it to ``out``."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
