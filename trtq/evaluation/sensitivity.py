"""Measured layer sensitivity: for each quantized layer, the task metric of the deployed engine
when only that layer is left in float — what keeping it out of INT8 buys, measured rather than
predicted. The per-layer noise ranking (:mod:`.per_layer`) estimates where noise appears; on
the PP-OCR detector keeping its top six layers in float made the output *worse*, because noise
added is not what the task loses.

The engine builder and the scoring are the caller's (``score(float_layers)`` → metric value),
so the same measurement runs on ONNX Runtime and on TensorRT engines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..progress import Progress
from .tasks import lower_is_better


def gain(value: float, base: float, metric: str) -> float:
    """How much better ``value`` is than ``base`` (positive: better), whatever the metric's direction."""
    return base - value if lower_is_better(metric) else value - base


def measure(layers: list[tuple[str, str]], score: Callable[[list[str]], tuple[float, float]], metric: str,
            base: tuple[float, float], time_budget_s: float, progress: Progress) -> dict:
    """``layers``: (node, op) of each quantized layer; ``score(float_layers)`` → (the metric, the
    output's SQNR); ``base``: both with every layer in INT8. Ranked by the metric's gain, ties
    (a rate over a few samples moves in steps) by the SQNR's. Layers not reached within
    ``time_budget_s`` are listed as unmeasured, never guessed."""
    rows, unmeasured = [], []
    t0 = time.perf_counter()
    with progress.task("measuring layer sensitivity", len(layers), "layers") as advance:
        for node, op in layers:
            if time.perf_counter() - t0 > time_budget_s:
                unmeasured.append(node)
                continue
            t = time.perf_counter()
            value, sqnr = score([node])
            rows.append({"node": node, "op": op, "metric": value, "gain": gain(value, base[0], metric),
                         "sqnr_db": sqnr, "sqnr_gain_db": _db_gain(sqnr, base[1]), "seconds": time.perf_counter() - t})
            advance(1)
    rows.sort(key=lambda r: (-r["gain"], -r["sqnr_gain_db"]))
    return {"metric": metric, "all_int8": base[0], "all_int8_sqnr_db": base[1], "layers": rows, "unmeasured": unmeasured,
            "seconds": time.perf_counter() - t0}


def ranking(sensitivity: dict) -> list[str]:
    """Layers most worth keeping in float first; unmeasured layers after every measured one."""
    return [r["node"] for r in sensitivity["layers"]] + list(sensitivity["unmeasured"])


def _db_gain(value: float, base: float) -> float:
    d = value - base
    return d if math.isfinite(d) else (math.inf if value > base else 0.0)
