"""Task-aware fidelity: what INT8 changes in what the model's output *means*.

One streaming accumulator per kind of output, each folding FP32/INT8 batches into counts and
sums (detections keep one (score, hit) pair per detection, never the outputs):

* detection — YOLO-style heads ``[B, 4+C, N]`` / ``[B, N, 4+C]`` (score threshold, per-class
  NMS) or already-NMS'd ``[B, N, 6]`` rows ``x1 y1 x2 y2 score class``; INT8's detections
  against FP32's as the reference: precision, recall, mAP@0.5, class agreement of matched
  boxes; against ground-truth boxes when they are given (real mAP);
* dense — maps ``[B, 1, H, W]`` (thresholded) or ``[B, C, H, W]`` (argmax over C): mask IoU,
  pixel agreement;
* sequence — ``[B, T, C]`` per-step distributions, CTC greedy decode: identical-sequence rate,
  character error rate (edit distance / reference length), per-step agreement;
* generic — SQNR, cosine (only where a sample has more than one value), max error.

Classification stays :class:`~trtq.evaluation.metrics.AccuracyAccumulator`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import Fidelity, put_rate

# metrics where a smaller value is better; every other metric: larger is better
LOWER_IS_BETTER = {"cer", "max_abs_error", "mean_abs_error", "mean_abs_error_pct"}


def lower_is_better(metric: str) -> bool:
    """``metric``: a name, ``output:name`` (output names hold dots) or ``custom.name``."""
    base = metric.rsplit(":", 1)[-1]
    return base.removeprefix("custom.") in LOWER_IS_BETTER


# ---------------------------------------------------------------- detection

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (x1, y1, x2, y2) → [N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [K, 4] x1 y1 x2 y2
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int


def _xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def decode_detections(output: np.ndarray, layout: str, score_threshold: float = 0.25, iou_threshold: float = 0.45,
                      max_detections: int = 300, box_format: str = "cxcywh") -> list[Detections]:
    """Each image's detections of a head output. ``layout``: ``channels_first`` ``[B, 4+C, N]``,
    ``channels_last`` ``[B, N, 4+C]`` (boxes ``box_format``, then class scores; best class per
    box, score threshold, per-class NMS), or ``nms`` ``[B, N, 6]`` (x1 y1 x2 y2 score class,
    already suppressed: only the threshold applies)."""
    out = np.asarray(output, np.float64)
    if layout == "channels_first":
        out = np.swapaxes(out, 1, 2)
    dets = []
    for rows in out:
        if layout == "nms":
            boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)
        else:
            cls_scores = rows[:, 4:]
            classes = cls_scores.argmax(axis=1)
            scores = cls_scores[np.arange(len(rows)), classes]
            boxes = _xyxy(rows[:, :4], box_format)
        sel = scores >= score_threshold
        boxes, scores, classes = boxes[sel], scores[sel], classes[sel]
        if layout != "nms" and len(scores):
            # per-class NMS as one pass: boxes of different classes are moved apart
            offset = classes[:, None] * (np.abs(boxes).max() + 1) * 2
            keep = nms(boxes + offset, scores, iou_threshold)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        order = np.argsort(-scores, kind="stable")[:max_detections]
        dets.append(Detections(boxes[order], scores[order], classes[order]))
    return dets


def match(reference: Detections, test: Detections, iou_threshold: float = 0.5,
          same_class: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching, best-scoring test box first (as COCO/VOC): (per test box: the matched
    reference box's index or -1, in ``test`` order)."""
    matched = np.full(len(test.scores), -1, dtype=np.int64)
    if not len(test.scores) or not len(reference.scores):
        return matched, np.zeros(len(reference.scores), dtype=bool)
    iou = box_iou(test.boxes, reference.boxes)
    if same_class:
        iou = np.where(test.classes[:, None] == reference.classes[None, :], iou, 0.0)
    taken = np.zeros(len(reference.scores), dtype=bool)
    for t in np.argsort(-test.scores, kind="stable"):
        cand = np.where(~taken & (iou[t] >= iou_threshold), iou[t], -1.0)
        r = int(cand.argmax())
        if cand[r] >= 0:
            matched[t], taken[r] = r, True
    return matched, taken


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """Area under the precision envelope (all-point interpolation, VOC 2010+/COCO without the
    101-point sampling) of detections ``scores`` with ``hits`` (true positive or not) against
    ``positives`` reference objects."""
    if positives == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    fp = np.cumsum(1.0 - np.asarray(hits, dtype=np.float64)[order])
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-300), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


class DetectionAccumulator:
    """INT8 detections against a reference (FP32's detections, or ground truth when given)."""

    def __init__(self, layout: str, score_threshold: float = 0.25, iou_threshold: float = 0.45,
                 match_iou: float = 0.5, max_detections: int = 300, box_format: str = "cxcywh"):
        self.decode = dict(layout=layout, score_threshold=score_threshold, iou_threshold=iou_threshold,
                           max_detections=max_detections, box_format=box_format)
        self.match_iou = match_iou
        self.n = self.ref_boxes = self.test_boxes = self.tp = self.loc_matched = self.class_same = 0
        self.per_class: dict[int, list] = {}  # class → [scores, hits, reference count]
        self.truth = _TruthAP(match_iou)

    def update(self, fp32: np.ndarray, int8: np.ndarray, truth: list[Detections] | None = None) -> None:
        refs, tests = decode_detections(fp32, **self.decode), decode_detections(int8, **self.decode)
        self.n += len(refs)
        for i, (ref, test) in enumerate(zip(refs, tests)):
            self._fold(ref, test)
            if truth is not None:
                self.truth.fold(truth[i], test, refs[i])

    def _fold(self, ref: Detections, test: Detections) -> None:
        matched, _ = match(ref, test, self.match_iou)
        loose, _ = match(ref, test, self.match_iou, same_class=False)
        self.ref_boxes += len(ref.scores)
        self.test_boxes += len(test.scores)
        self.tp += int((matched >= 0).sum())
        self.loc_matched += int((loose >= 0).sum())
        self.class_same += int(np.sum(test.classes[loose >= 0] == ref.classes[loose[loose >= 0]]))
        for c in np.union1d(ref.classes, test.classes):
            entry = self.per_class.setdefault(int(c), [[], [], 0])
            sel = test.classes == c
            entry[0].append(test.scores[sel])
            entry[1].append(matched[sel] >= 0)
            entry[2] += int(np.sum(ref.classes == c))

    def result(self) -> dict:
        out: dict = {"task": "detection", "images": self.n, "reference_boxes": self.ref_boxes,
                     "int8_boxes": self.test_boxes}
        if self.test_boxes:
            put_rate(out, "precision", self.tp, self.test_boxes)
        if self.ref_boxes:
            put_rate(out, "recall", self.tp, self.ref_boxes)
        if self.loc_matched:
            put_rate(out, "class_agreement", self.class_same, self.loc_matched)
        out["map50"] = _mean_ap(self.per_class)
        if self.truth.images:
            out["ground_truth"] = self.truth.result()
        return out


def _mean_ap(per_class: dict[int, list]) -> float:
    aps = [average_precision(np.concatenate(s), np.concatenate(h), n) for s, h, n in per_class.values() if n]
    return float(np.mean(aps)) if aps else (1.0 if not any(len(np.concatenate(s)) for s, _, _ in
                                                             per_class.values()) else 0.0)


class _TruthAP:
    """mAP@``iou`` of FP32's and INT8's detections against ground-truth boxes."""

    def __init__(self, iou: float):
        self.iou = iou
        self.images = 0
        self.sides: dict[str, dict[int, list]] = {"fp32": {}, "int8": {}}

    def fold(self, truth: Detections, int8: Detections, fp32: Detections) -> None:
        self.images += 1
        for side, det in (("fp32", fp32), ("int8", int8)):
            matched, _ = match(truth, det, self.iou)
            for c in np.union1d(truth.classes, det.classes):
                entry = self.sides[side].setdefault(int(c), [[], [], 0])
                sel = det.classes == c
                entry[0].append(det.scores[sel])
                entry[1].append(matched[sel] >= 0)
                entry[2] += int(np.sum(truth.classes == c))

    def result(self) -> dict:
        return {"images": self.images, "fp32_map50": _mean_ap(self.sides["fp32"]),
                "int8_map50": _mean_ap(self.sides["int8"])}


# ---------------------------------------------------------------- dense maps

class DenseAccumulator:
    """Maps ``[B, 1, …]`` thresholded at ``threshold`` (mask IoU of the foreground), or
    ``[B, C, …]`` with C > 1 as a per-pixel argmax over C (mean IoU over the classes present)."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.n = self.pixels = self.agree = 0
        self.inter: dict[int, int] = {}
        self.union: dict[int, int] = {}

    def labels(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 3 or x.shape[1] == 1:
            return (x.reshape(len(x), -1) > self.threshold).astype(np.int64)
        return x.argmax(axis=1).reshape(len(x), -1)

    def update(self, fp32: np.ndarray, int8: np.ndarray, labels=None) -> None:
        a, b = self.labels(fp32), self.labels(int8)
        self.n += len(a)
        self.pixels += a.size
        self.agree += int(np.sum(a == b))
        binary = np.ndim(fp32) < 3 or np.shape(fp32)[1] == 1
        for c in ([1] if binary else np.union1d(np.unique(a), np.unique(b))):
            ia, ib = a == c, b == c
            self.inter[int(c)] = self.inter.get(int(c), 0) + int(np.sum(ia & ib))
            self.union[int(c)] = self.union.get(int(c), 0) + int(np.sum(ia | ib))

    def result(self) -> dict:
        ious = [self.inter[c] / self.union[c] for c in self.union if self.union[c]]
        out = {"task": "dense", "samples": self.n, "threshold": self.threshold,
               "mask_iou": float(np.mean(ious)) if ious else 1.0}
        put_rate(out, "pixel_agreement", self.agree, self.pixels)
        out.pop("pixel_agreement_ci95")  # millions of correlated pixels: a binomial interval means nothing
        return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int(np.sum(a | b))
    return int(np.sum(a & b)) / union if union else 1.0


# ---------------------------------------------------------------- sequences

def ctc_greedy(probs: np.ndarray, blank: int = 0) -> list[list[int]]:
    """CTC greedy decoding of ``[B, T, C]``: the best class per step, repeats merged, blanks dropped."""
    best = np.asarray(probs).argmax(axis=-1)
    out = []
    for row in best:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != blank)
        out.append(row[keep].tolist())
    return out


def edit_distance(a, b) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two sequences."""
    a, b = list(a), list(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class SequenceAccumulator:
    """CTC greedy decodes of FP32 (the reference) and INT8: identical sequences, character error
    rate (edit distance over the reference's length, summed over samples), per-step agreement."""

    def __init__(self, blank: int = 0):
        self.blank = blank
        self.n = self.identical = self.edits = self.ref_chars = self.steps = self.steps_same = 0

    def update(self, fp32: np.ndarray, int8: np.ndarray, labels=None) -> None:
        ref, test = ctc_greedy(fp32, self.blank), ctc_greedy(int8, self.blank)
        self.n += len(ref)
        for r, t in zip(ref, test):
            self.identical += r == t
            self.edits += edit_distance(r, t)
            self.ref_chars += len(r)
        sa, sb = np.asarray(fp32).argmax(axis=-1), np.asarray(int8).argmax(axis=-1)
        self.steps += sa.size
        self.steps_same += int(np.sum(sa == sb))

    def result(self) -> dict:
        out: dict = {"task": "sequence", "samples": self.n, "blank": self.blank}
        put_rate(out, "identical_rate", self.identical, self.n)
        out["cer"] = self.edits / self.ref_chars if self.ref_chars else (0.0 if not self.edits else math.inf)
        out["reference_chars"] = self.ref_chars
        put_rate(out, "step_agreement", self.steps_same, self.steps)
        out.pop("step_agreement_ci95")  # steps of one sample are not independent
        return out


# ---------------------------------------------------------------- generic

class GenericAccumulator(Fidelity):
    """SQNR, max and mean absolute error; cosine only where a sample has more than one value
    (the cosine of two scalars is ±1, whatever their difference)."""

    def update(self, fp32: np.ndarray, int8: np.ndarray, labels=None) -> None:
        super().update(fp32, int8)

    def result(self) -> dict:
        out = {"task": "generic", **super().result()}
        cos = out.pop("cosine_mean")
        if self.per_sample > 1:
            out["cosine"] = cos
        return out


# ---------------------------------------------------------------- which task an output is

def _is_distribution(x: np.ndarray) -> bool:
    """Every row along the last axis is a probability (or log-probability) distribution."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return False
    if x.min() >= 0 and np.allclose(x.sum(axis=-1), 1, atol=1e-3):
        return True
    return bool(x.max() <= 0 and np.allclose(np.exp(x).sum(axis=-1), 1, atol=1e-3))


def detection_layout(shape: tuple[int, ...]) -> str:
    """``[B, 4+C, N]`` or ``[B, N, 4+C]``: the shorter of the last two axes holds the box and scores."""
    return "channels_first" if shape[1] < shape[2] else "channels_last"


def infer_task(output: np.ndarray, batch_first: bool = True) -> tuple[str, str]:
    """(task, what it was inferred from) for one output, from a batch of its FP32 values;
    ``batch_first``: whether the output's first axis is the batch (the model declares a fixed
    first dimension for a recurrent state such as ``[2, B, 128]``)."""
    shape = tuple(np.shape(output))
    if not batch_first:
        return "generic", f"{list(shape)}: the first axis is not the batch (compared value by value)"
    dims = "[" + ", ".join(["B", *map(str, shape[1:])]) + "]"
    if len(shape) == 2 and shape[1] >= 2:
        return "classification", f"{dims}: one score per class"
    if len(shape) == 3 and shape[2] >= 2 and _is_distribution(output):
        return "sequence", f"{dims}: a distribution over {shape[2]} classes at each of {shape[1]} steps (CTC)"
    if len(shape) == 3 and min(shape[1:]) >= 5 and max(shape[1:]) >= max(256, 4 * min(shape[1:])):
        return "detection", (f"{dims}: {min(shape[1:])} values (box + class scores) for each of "
                             f"{max(shape[1:])} candidates")
    if len(shape) == 4 and min(shape[2:]) >= 8:
        what = "a probability map" if shape[1] == 1 else f"a map of {shape[1]} channels"
        return "dense", f"{dims}: {what} over {shape[2]}×{shape[3]} positions"
    return "generic", f"{dims}: no task shape (compared value by value)"
