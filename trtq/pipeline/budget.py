"""The searches a build runs on its own evaluation samples before it writes anything:
``calibrator.method: auto`` (every built-in method from the one collection, the best on the task
metric kept), ``evaluation.sensitivity`` (each layer's measured effect) and
``quantization.accuracy_target`` (the fewest layers in float that meet the target).

The target search uses the measured ranking: it grows the number k of top-ranked layers in float
1, 2, 4, … until the target is met, bisects k between the last miss and the first hit, then
prunes — drops each chosen layer, least sensitive first, whose removal still meets the target —
and confirms the choice on the next, disjoint samples. Every candidate is an engine built the way
the build builds its own (:mod:`.variants`), scored against FP32 outputs held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..calib.calibrate import Calibration
from ..errors import JobError
from ..evaluation import sensitivity
from ..evaluation.evaluate import latency_feeds
from ..evaluation.latency import interleaved
from ..evaluation.scoring import pick
from ..evaluation.splits import Split
from ..evaluation.tasks import lower_is_better
from ..job import AccuracyTarget, Job
from ..model.prepare import PreparedModel
from ..progress import Progress
from ..runtime.onnxruntime import Runner, session
from .variants import Variants, with_float

KEPT = "kept in float by quantization.accuracy_target"
PRIMARY = {"classification": "top1_agreement", "detection": "map50", "dense": "mask_iou", "sequence": "cer",
           "generic": "sqnr_db"}
TIMED_ITERATIONS = 10  # per candidate, interleaved with FP32: a ratio, not a benchmark


@dataclass
class Searched:
    method: str | None = None  # calibrator.method auto: the method kept
    float_layers: list[str] = field(default_factory=list)  # layers the accuracy target keeps in float
    section: dict = field(default_factory=dict)  # report.json's "search"


def apply(searched: Searched, job: Job, prepared: PreparedModel, cal: Calibration) -> PreparedModel:
    """The build's model and calibration as the searches chose them (``cal`` in place)."""
    if searched.method is not None:
        described, cal.ranges = cal.candidates[searched.method]
        cal.info["method"] = {**described, "chosen_by": "calibrator.method auto"}
    if not searched.float_layers:
        return prepared
    return with_float(job, prepared, searched.float_layers, KEPT)


def wanted(job: Job) -> bool:
    ev = job.evaluation
    return ev is not None and (job.calibrator.method == "auto" or job.quantization.accuracy_target is not None
                               or ev.sensitivity.enabled)


class Search:
    """One build's candidates: the FP32 model, the variants' engines, the splits."""

    def __init__(self, job: Job, prepared: PreparedModel, cal: Calibration, cpu: dict, why_not, progress: Progress):
        self.job, self.prepared, self.cal, self.progress = job, prepared, cal, progress
        self.spec = job.evaluation
        self.variants = Variants(job, prepared, cal.means if job.quantization.bias_correction else None, cpu,
                                 why_not, progress)
        self.fp32 = Runner(session(prepared.model, threads=self.spec.latency.threads))
        self.timed = job.quantization.target == "onnxruntime" or why_not is None
        self.ranges = cal.ranges

    def split(self, skip: int, count: int) -> Split:
        return Split(self.prepared, self.spec, self.fp32, skip, count)

    def score(self, split: Split, float_layers=(), ranges=None, timed: bool = False) -> tuple[dict, float | None]:
        """(every metric, INT8/FP32 latency ratio when ``timed``) of one candidate on ``split``."""
        with self.variants.engine(ranges or self.ranges, float_layers) as engine:
            values = split.score(engine)
            ratio = self._ratio(engine, split) if timed and self.timed else None
        return values, ratio

    def _ratio(self, engine, split: Split) -> float:
        feeds = latency_feeds(split.feeds(), self.spec.latency.batch_sizes[0], self.prepared.inputs)
        t = interleaved({"fp32": lambda: self.fp32(feeds), "int8": lambda: engine(feeds)}, 2, TIMED_ITERATIONS)
        return float(np.median(t["int8"]) / np.median(t["fp32"]))

    def default_metric(self, split: Split) -> str:
        first = self.fp32.output_names[0]
        return f"{first}:{PRIMARY[split.tasks[first]]}"


def run(job: Job, prepared: PreparedModel, cal: Calibration, cpu: dict, why_not: str | None,
        progress: Progress) -> Searched:
    """The searches the job asks for, in order: calibration method, sensitivity, accuracy target."""
    s = Search(job, prepared, cal, cpu, why_not, progress)
    try:
        return _run(s)
    finally:
        s.variants.close()


def _run(s: Search) -> Searched:
    job, spec = s.job, s.spec
    target = job.quantization.accuracy_target
    n_select = target.selection_samples if target else spec.sensitivity.samples
    select = s.split(0, n_select)
    if not select.samples:
        raise JobError(f"evaluation: no samples from sample {select.skip} on for the searches to score; check "
                       "evaluation.skip and the data")
    fp32_values = select.score(None)  # also learns each output's task
    metric = (target.metric if target else None) or spec.sensitivity.metric or s.default_metric(select)
    pick(fp32_values, metric, "quantization.accuracy_target.metric" if target else "evaluation.sensitivity.metric")
    out = Searched()
    out.section["selection"] = {"skip": select.skip, "samples": select.samples}
    if s.cal.candidates:
        out.method = _auto_method(s, select, metric, out.section)
    if spec.sensitivity.enabled:
        out.section["sensitivity"] = measure_sensitivity(s, metric)
    if target is not None:
        out.float_layers = _target(s, select, target, out.section)
    return out


def _auto_method(s: Search, select: Split, metric: str, section: dict) -> str:
    rows = []
    with s.progress.task("scoring calibration methods", len(s.cal.candidates), "methods") as advance:
        for name, (described, ranges) in s.cal.candidates.items():
            values, _ = s.score(select, ranges=ranges)
            rows.append({"method": name, **described, "metric": values[metric]})
            advance(1)
    best = max(rows, key=lambda r: sensitivity.gain(r["metric"], rows[0]["metric"], metric))
    s.ranges = s.cal.candidates[best["method"]][1]
    section["calibrator_auto"] = {"metric": metric, "methods": rows, "chosen": best["method"]}
    s.progress.note(f"calibrator.method auto: {best['method']} ({metric} {best['metric']:.4g} on "
                    f"{select.samples} selection samples; " + ", ".join(f"{r['method']} {r['metric']:.4g}"
                                                                      for r in rows) + ")")
    return best["method"]


def quantized_layers(prepared: PreparedModel) -> list[tuple[str, str]]:
    """(node, op) of every layer the plan quantizes: weighted ops, residual Adds, pooling."""
    ops = {n.name: n.op_type for n in prepared.model.graph.node}
    plan = prepared.plan
    return ([(q.node, q.op_type) for q in plan.nodes] + [(a.node, "Add") for a in plan.adds]
            + [(node, ops[node]) for node, _ in plan.pools])


def measure_sensitivity(s: Search, metric: str) -> dict:
    sspec = s.spec.sensitivity
    target = s.job.quantization.accuracy_target
    # within the selection split: the confirmation samples stay unseen
    split = s.split(0, min(sspec.samples, target.selection_samples) if target else sspec.samples)
    sqnr = f"{s.fp32.output_names[0]}:sqnr_db"

    def score(layers=()):
        values = s.score(split, layers)[0]
        return values[metric], values[sqnr]

    result = sensitivity.measure(quantized_layers(s.prepared), score, metric, score(), sspec.time_budget_s,
                                 s.progress)
    result["samples"] = split.samples
    return result


def bound(target: AccuracyTarget, fp32_value: float) -> tuple[str, float]:
    """(the comparison, the threshold) a value must meet: ``>=`` or ``<=``."""
    lower = lower_is_better(target.metric)
    if target.minimum is not None:
        return ">=", target.minimum
    if target.maximum is not None:
        return "<=", target.maximum
    if not math.isfinite(fp32_value):
        raise JobError(f"quantization.accuracy_target: {target.metric} of FP32 against itself is {fp32_value}; "
                       "max_drop needs a finite reference, give minimum instead")
    return ("<=", fp32_value + target.max_drop) if lower else (">=", fp32_value - target.max_drop)


def meets(value: float, op: str, threshold: float) -> bool:
    return value <= threshold if op == "<=" else value >= threshold


class Steps:
    """Every candidate the target search scored, each once."""

    def __init__(self, s: Search, split: Split, metric: str, op: str, threshold: float, max_steps: int,
                 timed: bool = True):
        self.s, self.split, self.metric, self.op, self.threshold = s, split, metric, op, threshold
        self.max_steps, self.timed = max_steps, timed
        self.rows: list[dict] = []
        self.seen: dict[frozenset, dict] = {}

    def full(self) -> bool:
        return len(self.rows) >= self.max_steps

    def try_(self, phase: str, layers: list[str]) -> bool:
        key = frozenset(layers)
        if key not in self.seen:
            values, ratio = self.s.score(self.split, layers, timed=self.timed)
            row = {"step": len(self.rows) + 1, "phase": phase, "float_layers": list(layers), "count": len(layers),
                   "metric": values[self.metric], "meets": meets(values[self.metric], self.op, self.threshold),
                   "latency_ratio": ratio}
            self.rows.append(row)
            self.seen[key] = row
            self.s.progress.note(f"accuracy target, {phase}: {len(layers)} layer(s) in float → {self.metric} "
                                 f"{row['metric']:.4g} ({'meets' if row['meets'] else 'misses'} "
                                 f"{self.op} {self.threshold:.4g})")
        return self.seen[key]["meets"]


def grow(steps: Steps, order: list[str]) -> list[str]:
    """The smallest top-k of ``order`` that meets the target: k doubled until it does, then bisected."""
    lo, hi, k = 0, len(order), 1
    while k < len(order) and not steps.full():
        if steps.try_("grow", order[:k]):
            hi = k
            break
        lo, k = k, 2 * k
    while hi - lo > 1 and not steps.full():
        mid = (lo + hi) // 2
        if steps.try_("bisect", order[:mid]):
            hi = mid
        else:
            lo = mid
    return order[:hi]


def prune(steps: Steps, chosen: list[str]) -> list[str]:
    """Drop each chosen layer, least sensitive first, whose removal still meets the target."""
    for layer in reversed(list(chosen)):
        if steps.full() or len(chosen) == 1:
            break
        trial = [x for x in chosen if x != layer]
        if steps.try_("prune", trial):
            chosen = trial
    return chosen


def _target(s: Search, select: Split, target: AccuracyTarget, section: dict) -> list[str]:
    metric = target.metric
    fp32_value = pick(select.score(None), metric, "quantization.accuracy_target.metric")
    op, threshold = bound(target, fp32_value)
    if not meets(fp32_value, op, threshold):
        raise JobError(f"quantization.accuracy_target: {metric} {op} {threshold:.4g} is missed even with every layer "
                       f"in float (FP32 gives {fp32_value:.4g} on {select.samples} selection samples); loosen the "
                       "target or change the evaluation data")
    steps = Steps(s, select, metric, op, threshold, target.max_steps)
    chosen: list[str] = []
    if not steps.try_("all INT8", []):
        if "sensitivity" not in section:  # measured only when the target needs it
            section["sensitivity"] = measure_sensitivity(s, metric)
        order = sensitivity.ranking(section["sensitivity"])
        chosen = prune(steps, grow(steps, order))
    section["accuracy_target"] = {"metric": metric, "op": op, "threshold": threshold, "fp32": fp32_value,
                                  "steps": steps.rows, "float_layers": chosen,
                                  "confirmation": _confirm(s, target, metric, op, threshold, chosen)}
    return chosen


def _confirm(s: Search, target: AccuracyTarget, metric: str, op: str, threshold: float, chosen: list[str]) -> dict:
    """The chosen configuration and all-INT8 on the next, disjoint samples."""
    if not target.confirmation_samples:
        return {"samples": 0}
    split = s.split(target.selection_samples, target.confirmation_samples)
    if not split.samples:
        s.progress.note("accuracy target: no evaluation samples after the selection split to confirm on")
        return {"samples": 0}
    chosen_v = s.score(split, chosen)[0][metric]
    out = {"skip": split.skip, "samples": split.samples, "fp32": split.score(None)[metric],
           "all_int8": s.score(split)[0][metric], "chosen": chosen_v, "meets": meets(chosen_v, op, threshold)}
    if not out["meets"]:
        s.progress.note(f"accuracy target: confirmed on {split.samples} other samples, the choice gives {metric} "
                        f"{chosen_v:.4g}, missing {op} {threshold:.4g}; evaluate on more samples")
    return out
