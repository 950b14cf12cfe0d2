"""A bounded split of the evaluation samples held in memory with FP32's outputs, so candidate
engines (another calibration method, other layers in float) are scored on the same samples
without running FP32 again: the selection split the searches choose on, and the disjoint
confirmation split after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.sources import batches, open_source
from ..job import EvaluationSpec
from ..model.prepare import PreparedModel
from .evaluate import run_checked
from .scoring import Scorer, metric_values


@dataclass
class _Held:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    samples: int
    fp32: list[np.ndarray]


class Split:
    """``count`` evaluation samples from ``skip`` on (after the job's own ``skip``)."""

    def __init__(self, prepared: PreparedModel, spec: EvaluationSpec, fp32, skip: int, count: int):
        self.spec, self.names = spec, fp32.output_names
        self.held: list[_Held] = []
        self.tasks: dict[str, str] = {}  # output → its task, once scored
        src = open_source(spec, prepared.inputs, "evaluation")
        for batch in batches(src, prepared.inputs, spec.batch_size, "evaluation", spec.skip + skip, count):
            self.held.append(_Held(batch.feeds, batch.labels, len(batch), run_checked(fp32, batch, self.names)))
        self.samples = sum(h.samples for h in self.held)
        self.skip = spec.skip + skip

    def score(self, engine: Callable | None) -> dict[str, float]:
        """Every metric of ``engine`` (``engine(feeds, names)`` → outputs) against FP32 on this
        split; ``None`` scores FP32 against itself (FP32's own value of each metric)."""
        scorer = Scorer(self.spec, self.names)
        for h in self.held:
            scorer.update(h.feeds, h.fp32, h.fp32 if engine is None else engine(h.feeds, self.names), h.labels,
                          h.samples)
        result = scorer.result()
        self.tasks = {n: r["task"] for n, r in result["tasks"].items()}
        return metric_values(result)

    def feeds(self) -> dict[str, np.ndarray]:
        """The first batch's feeds (for timing)."""
        return self.held[0].feeds
