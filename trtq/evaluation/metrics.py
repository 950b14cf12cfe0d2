"""Accuracy and fidelity metrics, FP32 vs INT8 on the same samples."""

from __future__ import annotations

import math

import numpy as np


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σref² / Σ(ref-test)²)`` in dB."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(test, dtype=np.float64)) ** 2))
    return ratio_db(float(np.sum(ref**2)), noise)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class Fidelity:
    """Sums for SQNR, cosine and absolute error of INT8 against FP32, batch by batch."""

    def __init__(self):
        self.n = self.values = self.per_sample = 0
        self.signal = self.noise = self.cos_sum = self.max_abs = self.abs_sum = 0.0

    def update(self, fp32: np.ndarray, int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold one batch; returns both sides as float64 ``[batch, values]``."""
        a = np.asarray(fp32, dtype=np.float64).reshape(len(fp32), -1)
        b = np.asarray(int8, dtype=np.float64).reshape(len(int8), -1)
        d = a - b
        self.n += len(a)
        self.values += d.size
        self.per_sample = a.shape[1]
        self.signal += float(np.sum(a * a))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.abs(d).max(initial=0.0)))
        self.abs_sum += float(np.abs(d).sum())
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.where((na > 0) & (nb > 0), np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-300), 1.0)
        self.cos_sum += float(cos.sum())
        return a, b

    def result(self) -> dict:
        return {"samples": self.n, "sqnr_db": ratio_db(self.signal, self.noise),
                "cosine_mean": self.cos_sum / self.n if self.n else math.nan,
                "max_abs_error": self.max_abs,
                "mean_abs_error": self.abs_sum / self.values if self.values else math.nan}


class AccuracyAccumulator:
    """Folds FP32/INT8 outputs batch by batch; keeps only counts and sums."""

    def __init__(self, top_k: int = 5):
        self.top_k = top_k
        self.n = 0
        self.labelled = 0
        self.fp32_top1 = self.int8_top1 = self.fp32_topk = self.int8_topk = 0
        self.agree = 0
        self.fidelity = Fidelity()
        self.classification = True

    def update(self, fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> None:
        a, b = self.fidelity.update(fp32, int8)
        self.n += len(a)
        if np.ndim(fp32) != 2 or a.shape[1] < 2:
            # only [batch, classes] is a classification: the argmax of a flattened map, a sequence of
            # per-step distributions or a box tensor means nothing
            self.classification = False
            return
        pa, pb = a.argmax(axis=1), b.argmax(axis=1)
        self.agree += int(np.sum(pa == pb))
        if labels is not None:
            k = min(self.top_k, a.shape[1])
            self.labelled += len(labels)
            self.fp32_top1 += int(np.sum(pa == labels))
            self.int8_top1 += int(np.sum(pb == labels))
            self.fp32_topk += _topk_hits(a, labels, k)
            self.int8_topk += _topk_hits(b, labels, k)

    def result(self) -> dict:
        """``{"fp32": {...}, "int8": {...}}`` with fractions as plain numbers and their 95 %
        Wilson intervals beside them (``top1`` and ``top1_ci95``)."""
        fidelity = self.fidelity.result()
        fp32: dict = {"samples": self.labelled}
        int8: dict = {"samples": self.n, "fidelity": fidelity}
        if self.classification:
            put_rate(int8, "top1_agreement", self.agree, self.n)
        if self.labelled:
            k = self.top_k
            put_rate(fp32, "top1", self.fp32_top1, self.labelled)
            put_rate(int8, "top1", self.int8_top1, self.labelled)
            put_rate(fp32, f"top{k}", self.fp32_topk, self.labelled)
            put_rate(int8, f"top{k}", self.int8_topk, self.labelled)
        return {"fp32": fp32, "int8": int8}


def ratio_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def put_rate(d: dict, key: str, successes: int, n: int) -> None:
    """``d[key]`` = successes / n and ``d[key_ci95]`` its Wilson interval (NaN when n is 0)."""
    d[key] = successes / n if n else math.nan
    d[f"{key}_ci95"] = list(wilson_interval(successes, n))


def _topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return int(np.sum(np.any(top == labels[:, None], axis=1)))
