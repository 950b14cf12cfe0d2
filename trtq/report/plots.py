"""PNG plots for report.md: latency distributions (FP32 vs INT8) and per-layer SQNR along the
graph. matplotlib is imported lazily with the non-interactive Agg backend."""

from __future__ import annotations

import math
from pathlib import Path



def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_plot(samples: dict[str, dict[str, list[float]]], path: Path) -> None:
    """``samples[batch][side]`` = per-iteration ms; one box/strip panel per batch size."""
    plt = _pyplot()
    sizes = list(samples)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.2), squeeze=False)
    for ax, bs in zip(axes[0], sizes):
        data = [samples[bs]["fp32"], samples[bs]["int8"]]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks([1, 2], ["FP32", "INT8"])
        ax.set_title(f"batch {bs}")
        ax.set_ylabel("latency (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Latency per iteration, measured interleaved")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def per_layer_plot(per_layer: dict, path: Path) -> None:
    plt = _pyplot()
    rows = per_layer["layers"]
    cap = 80.0
    out = [min(r["output_sqnr_db"], cap) if not math.isnan(r["output_sqnr_db"]) else 0 for r in rows]
    worst = set(per_layer["worst"][:3])
    fig, ax = plt.subplots(figsize=(max(6, 0.16 * len(rows)), 3.4))
    ax.plot(range(len(rows)), out, marker="o", markersize=3, label="output SQNR")
    for i, r in enumerate(rows):
        if r["node"] in worst:
            ax.annotate(r["node"], (i, out[i]), textcoords="offset points", xytext=(0, -14), ha="center",
                        fontsize=7, color="crimson")
            ax.plot([i], [out[i]], "o", color="crimson", markersize=5)
    ax.set_xlabel("quantized layer, in graph order")
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_title(f"Per-layer SQNR ({per_layer['samples']} samples); red: most noise added")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def sensitivity_plot(sens: dict, path: Path, top: int = 30) -> None:
    """The ``top`` layers whose staying in float helps the metric most, as bars."""
    plt = _pyplot()
    rows = sens["layers"][:top]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(rows) + 1)))
    ax.barh(range(len(rows)), [r["gain"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), [r["node"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{sens['metric']}: better by (only this layer in float)")
    ax.set_title(f"Measured layer sensitivity ({sens['samples']} samples; all INT8: {sens['all_int8']:.4g})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def target_plot(target: dict, path: Path) -> None:
    """Each candidate of the accuracy-target search: its metric against its INT8/FP32 latency."""
    plt = _pyplot()
    rows = [r for r in target["steps"] if r["latency_ratio"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        ax.plot(r["latency_ratio"], r["metric"], "o", color="tab:green" if r["meets"] else "tab:red")
        ax.annotate(str(r["count"]), (r["latency_ratio"], r["metric"]), textcoords="offset points", xytext=(4, 3),
                    fontsize=7)
    ax.axhline(target["threshold"], color="gray", linestyle="--", label=f"target {target['op']} "
               f"{target['threshold']:.4g}")
    ax.axvline(1.0, color="black", linewidth=0.8, label="FP32 latency")
    ax.set_xlabel("latency, INT8 candidate / FP32")
    ax.set_ylabel(target["metric"])
    ax.set_title("Accuracy target search (labels: layers in float; green meets)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
