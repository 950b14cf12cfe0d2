"""report.md's account of the build's searches: the calibration methods compared, the measured
layer sensitivity, and every step of the accuracy-target search."""

from __future__ import annotations

from ..artifacts import SENSITIVITY_PNG, TARGET_PNG

SHOWN_LAYERS = 15


def _v(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


def _ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}× FP32"


def _auto_lines(auto: dict) -> list[str]:
    lines = ["", "## Calibration method (auto)", "",
             f"Every built-in method derived from the one statistics collection, scored by `{auto['metric']}` "
             "on the selection samples; the best is the build's.", "", "| method | metric | kept |", "|---|---|---|"]
    lines += [f"| {r['method']} | {_v(r['metric'])} | {'✓' if r['method'] == auto['chosen'] else ''} |"
              for r in auto["methods"]]
    return lines


def _sensitivity_lines(sens: dict, plots: list[str]) -> list[str]:
    lines = ["", f"## Measured layer sensitivity ({sens['samples']} samples, {sens['seconds']:.0f} s)", "",
             f"`{sens['metric']}` of the engine with only that layer in float (every layer in INT8: "
             f"{_v(sens['all_int8'])}), most helpful first.", "", "| # | layer | op | metric | better by |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(sens["layers"][:SHOWN_LAYERS], 1):
        lines.append(f"| {i} | `{r['node']}` | {r['op']} | {_v(r['metric'])} | {r['gain']:+.4g} |")
    if len(sens["layers"]) > SHOWN_LAYERS:
        lines.append(f"| … | {len(sens['layers']) - SHOWN_LAYERS} more in report.json | | | |")
    if sens["unmeasured"]:
        lines += ["", f"{len(sens['unmeasured'])} layer(s) not measured within the time budget "
                  "(evaluation.sensitivity.time_budget_s)."]
    if SENSITIVITY_PNG in plots:
        lines += ["", f"![sensitivity]({SENSITIVITY_PNG})"]
    return lines


def _target_lines(t: dict, selection: dict, plots: list[str]) -> list[str]:
    goal = f"`{t['metric']}` {t['op']} {_v(t['threshold'])}"
    kept = t["float_layers"]
    lines = ["", "## Accuracy target", "",
             f"Target {goal} (FP32 against itself: {_v(t['fp32'])}) on {selection['samples']} selection samples "
             f"(from sample {selection['skip']}). Chosen: **{len(kept)} layer(s) in float**"
             + (": " + ", ".join(f"`{n}`" for n in kept) if kept else "") + ".", "",
             "| step | phase | layers in float | metric | meets | latency |", "|---|---|---|---|---|---|"]
    for r in t["steps"]:
        lines.append(f"| {r['step']} | {r['phase']} | {r['count']} | {_v(r['metric'])} | "
                     f"{'yes' if r['meets'] else 'no'} | {_ratio(r['latency_ratio'])} |")
    c = t["confirmation"]
    if c.get("samples"):
        lines += ["", f"Confirmed on {c['samples']} other samples (from sample {c['skip']}): FP32 {_v(c['fp32'])}, "
                  f"all INT8 {_v(c['all_int8'])}, chosen {_v(c['chosen'])} — "
                  + ("meets the target." if c["meets"] else "**misses the target**; evaluate on more samples.")]
    if TARGET_PNG in plots:
        lines += ["", f"![accuracy target]({TARGET_PNG})"]
    return lines


def search_lines(report: dict) -> list[str]:
    search = report.get("search")
    if not search:
        return []
    plots = report.get("plots", [])
    lines = []
    if "calibrator_auto" in search:
        lines += _auto_lines(search["calibrator_auto"])
    if "sensitivity" in search:
        lines += _sensitivity_lines(search["sensitivity"], plots)
    if "accuracy_target" in search:
        lines += _target_lines(search["accuracy_target"], search["selection"], plots)
    return lines
