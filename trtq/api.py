"""trtq's Python API, for notebooks and scripts: the same work as ``trtq build`` and ``trtq eval``,
with the same one-line errors raised as :class:`~trtq.errors.TrtqError` instead of printed.

    import trtq
    job = trtq.load_job("configs/efficientnet_lite0.yaml", ["calibrator.method=entropy"])
    result = trtq.build(job)                       # BuildResult: out_dir, report
    print(result.report["int8"]["accuracy"]["top1_agreement"])
    again = trtq.evaluate(job)                     # the build evaluated again, not rebuilt
"""

from __future__ import annotations

from pathlib import Path

from .job import Job
from .job import load_job as _load_job
from .pipeline.build import BuildResult
from .pipeline.build import build as _build
from .pipeline.reevaluate import reevaluate
from .progress import Progress


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Read and validate a job file; ``overrides`` are ``KEY.PATH=VALUE`` strings as with ``--set``
    (relative paths in them resolve against the current folder)."""
    return _load_job(path, list(overrides))


def build(job: Job, out: str | Path | None = None, progress: Progress | None = None,
          force: bool = False) -> BuildResult:
    """Calibrate, quantize, build and (with an ``evaluation`` section) evaluate ``job`` into
    ``<out>/<job.name>`` (default: the job's ``output``). ``force`` collects calibration
    statistics again even when stored ones match."""
    return _build(job, Path(out) if out is not None else None, progress, reuse=not force)


def evaluate(job: Job, out: str | Path | None = None, progress: Progress | None = None) -> BuildResult:
    """Evaluate the existing build of ``job`` in ``<out>/<job.name>`` again, without rebuilding."""
    return reevaluate(job, Path(out) if out is not None else None, progress)
