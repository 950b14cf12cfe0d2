"""Scoring INT8 against FP32 batch by batch: the classification accumulator and fidelity of
every output (as before), each output's task metrics (:mod:`.tasks`) and the custom metric —
for the full evaluation and for the short ones the sensitivity and accuracy searches run.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import JobError
from ..job import EvaluationSpec
from ..plugins import import_callable
from . import tasks
from .metrics import AccuracyAccumulator


class _Classification:
    """The classification task's view of :class:`AccuracyAccumulator`."""

    def __init__(self, acc: AccuracyAccumulator):
        self.acc = acc

    def update(self, fp32, int8, labels=None) -> None:  # the accumulator is fed by the scorer
        pass

    def result(self) -> dict:
        r = self.acc.result()
        out = {"task": "classification", "samples": self.acc.n}
        for key, value in r["int8"].items():
            if key.startswith("top"):
                out[key] = value
        for key, value in r["fp32"].items():
            if key.startswith("top"):
                out[f"fp32_{key}"] = value
        return out


def task_accumulator(task: str, output: np.ndarray, spec: EvaluationSpec, acc: AccuracyAccumulator):
    if task == "classification":
        return _Classification(acc)
    if task == "detection":
        d = spec.detection
        layout = d.layout if d.layout != "auto" else tasks.detection_layout(np.shape(output))
        return tasks.DetectionAccumulator(layout, d.score_threshold, d.iou_threshold, d.match_iou, d.max_detections,
                                          d.box_format)
    if task == "dense":
        return tasks.DenseAccumulator(spec.dense_threshold)
    if task == "sequence":
        return tasks.SequenceAccumulator(spec.ctc_blank)
    return tasks.GenericAccumulator()


def _given_task(spec: EvaluationSpec, name: str) -> str:
    if isinstance(spec.task, str):
        return spec.task
    return spec.task.get(name, "auto")


class Scorer:
    """Folds FP32/INT8 output batches; keeps counts and sums (and, for a custom metric, what
    it is called with)."""

    def __init__(self, spec: EvaluationSpec, names: list[str]):
        self.spec, self.names = spec, names
        if isinstance(spec.task, dict):
            unknown = sorted(set(spec.task) - set(names))
            if unknown:
                raise JobError(f"evaluation.task: the model has no output '{unknown[0]}'; its outputs: "
                               f"{', '.join(names)}")
        self.accs = {n: AccuracyAccumulator(spec.top_k) for n in names}
        self.tasks: dict[str, tuple[object, dict]] = {}
        self.metric = import_callable(spec.metric, "evaluation.metric") if spec.metric else None
        self.kept: dict[str, list] = {"fp32": [], "int8": [], "labels": [], "inputs": []}

    def update(self, feeds: dict[str, np.ndarray], a: list[np.ndarray], b: list[np.ndarray], labels,
               samples: int) -> None:
        """One batch of ``samples`` samples: its feeds, both sides' outputs (in ``names`` order)."""
        for i, n in enumerate(self.names):
            lab = labels if i == 0 else None
            self.accs[n].update(a[i], b[i], lab)
            if n not in self.tasks:
                # an output whose first axis is not the batch's length (a state [2, B, 128]) is no task's
                self.tasks[n] = self._start(n, a[i], np.ndim(a[i]) > 0 and len(a[i]) == samples)
            self.tasks[n][0].update(a[i], b[i])
        if self.metric is not None:
            self.kept["fp32"].append(dict(zip(self.names, a)))
            self.kept["int8"].append(dict(zip(self.names, b)))
            self.kept["labels"].append(labels)
            self.kept["inputs"].append(feeds)

    def _start(self, name: str, first: np.ndarray, batch_first: bool):
        given = _given_task(self.spec, name)
        task, why = tasks.infer_task(first, batch_first)
        info = {"inferred_from": why} if given == "auto" else {"given": True}
        task = task if given == "auto" else given
        if task == "classification" and np.ndim(first) != 2:
            raise JobError(f"evaluation.task: output '{name}' has shape [B, {', '.join(map(str, first.shape[1:]))}]"
                           f", not [batch, classes]; give another task for it (e.g. {tasks.infer_task(first)[0]})")
        return task_accumulator(task, first, self.spec, self.accs[name]), info

    def result(self) -> dict:
        """``{"accuracy": {"fp32", "int8"}, "tasks": {output: {...}}, ["custom": {...}]}``."""
        names = self.names
        accuracy = self.accs[names[0]].result()
        if len(names) > 1:
            accuracy["int8"]["fidelity_by_output"] = {n: self.accs[n].result()["int8"]["fidelity"] for n in names}
        out = {"accuracy": accuracy, "tasks": {n: {**acc.result(), **info} for n, (acc, info) in self.tasks.items()}}
        if self.metric is not None:
            out["custom"] = run_metric(self.metric, self.spec.metric, self.kept, names)
        return out


def _takes_inputs(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if "inputs" in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return True
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())


def run_metric(fn, ref: str, kept: dict, names: list[str]) -> dict:
    """The custom metric over every kept sample: ``fn(fp32, int8, labels)``, or with a fourth
    argument ``inputs`` (input name → array) when its signature takes one."""
    cat = {side: {n: np.concatenate([b[n] for b in kept[side]]) for n in names} for side in ("fp32", "int8")}
    labels = None if any(lab is None for lab in kept["labels"]) else np.concatenate(kept["labels"])
    try:
        if _takes_inputs(fn):
            inputs = {k: np.concatenate([f[k] for f in kept["inputs"]]) for k in kept["inputs"][0]}
            out = fn(cat["fp32"], cat["int8"], labels, inputs)
        else:
            out = fn(cat["fp32"], cat["int8"], labels)
    except Exception as exc:  # noqa: BLE001 - user code
        raise JobError(f"evaluation.metric: {ref} raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(out, dict) or not all(isinstance(v, (int, float)) for v in out.values()):
        raise JobError(f"evaluation.metric: {ref} must return a dict of numbers, e.g. {{'map': 0.41}}")
    return {str(k): float(v) for k, v in out.items()}


def metric_values(scored: dict) -> dict[str, float]:
    """Every number a target or a ranking can name: ``output:metric`` for each output's task
    metrics and fidelity, the bare ``metric`` for the first output that has it, custom keys."""
    flat: dict[str, float] = {}
    fid = scored["accuracy"]["int8"].get("fidelity_by_output") or {}
    for name, res in scored["tasks"].items():
        vals = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        vals.setdefault("sqnr_db", (fid.get(name) or scored["accuracy"]["int8"]["fidelity"])["sqnr_db"])
        for k, v in vals.items():
            if k not in ("samples", "images", "blank", "threshold", "reference_chars", "reference_boxes", "int8_boxes"):
                flat[f"{name}:{k}"] = float(v)
                flat.setdefault(k, float(v))
    for k, v in (scored.get("custom") or {}).items():
        flat[f"custom.{k}"] = v
        flat.setdefault(k, v)
    return flat


def pick(values: dict[str, float], metric: str, key: str) -> float:
    if metric not in values:
        shown = ", ".join(sorted(k for k in values if ":" not in k and not k.startswith("custom.")))
        raise JobError(f"{key}: no metric '{metric}' in this model's evaluation; it has: {shown}")
    return values[metric]
