"""Task metrics of the PP-OCR models, INT8 against FP32, as ``evaluation.metric`` functions
(called with FP32 outputs, INT8 outputs and labels; each a dict of output name → array)."""

from __future__ import annotations

import numpy as np

DET_THRESHOLD = 0.3  # RapidOCR's binarisation threshold of the DBNet probability map


def det_mask_iou(fp32: dict, int8: dict, labels) -> dict:
    """IoU of the text masks (probability > 0.3) over all evaluated pages."""
    a, b = (next(iter(d.values())) > DET_THRESHOLD for d in (fp32, int8))
    union = np.logical_or(a, b).sum()
    return {"mask_iou": float(np.logical_and(a, b).sum() / union) if union else 1.0}


def ctc_strings(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, classes]: argmax per step, repeats merged, blank (0) dropped."""
    best = probs.argmax(axis=-1)
    out = []
    for row in best:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
        out.append(tuple(row[keep].tolist()))
    return out


def rec_strings_identical(fp32: dict, int8: dict, labels) -> dict:
    """Share of text lines whose greedy CTC string is the same in INT8 as in FP32."""
    a, b = (ctc_strings(next(iter(d.values()))) for d in (fp32, int8))
    return {"strings_identical": float(np.mean([x == y for x, y in zip(a, b)]))}
