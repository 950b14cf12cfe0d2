"""``trtq run``: many jobs — files, folders, sweeps — built incrementally, in parallel, locally
or on a Ray cluster, with a summary comparing them.

Each job goes through two phases:

1. **build** (calibration, Q/DQ, cache, engine): run in parallel by a bounded pool of worker
   processes (or as Ray tasks), each worker's ONNX Runtime limited to its share of the cores;
2. **evaluation** (accuracy, per-layer error, latency): strictly one job at a time, after every
   build has finished, so no latency measurement ever shares the machine with other work.

A stage is skipped when ``fingerprint.json`` in the job's folder records the fingerprint its
inputs have now (:mod:`trtq.runs.fingerprint`); ``--force`` rebuilds everything. A failed job is
reported with its error and the others go on; the exit status is the number of failed jobs.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import REPORT_JSON, SUMMARY_JSON, SUMMARY_MD, check_terminated, raise_on_sigterm, write_atomic_group
from ..errors import TrtqError
from ..job import Job
from ..progress import Progress
from ..report.writer import pct
from . import fingerprint as fp


@dataclass
class Item:
    job: Job
    file: Path
    root: Path
    build_fp: str | None
    eval_fp: str | None
    action: str = "build"  # build | evaluate | skip
    status: str = "pending"  # built | evaluated | up to date | failed
    error: str | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.root / self.job.name


def default_workers() -> int:
    """Parallel builds: one per two cores (each build's ONNX Runtime gets its two threads), at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def plan(jobs: list[tuple[Path, Job]], out_root: Path | None, force: bool) -> list[Item]:
    from ..runtime.onnxruntime import cpu_info

    cpu = cpu_info()
    items = []
    for file, job in jobs:
        root = Path(out_root) if out_root is not None else Path(job.output)
        b = fp.build_fingerprint(job, cpu)
        item = Item(job, file, root, b, fp.evaluation_fingerprint(job, b))
        have = {} if force else fp.read(item.folder)
        if b is not None and have.get("build") == b and (item.folder / REPORT_JSON).is_file():
            item.action = "skip" if job.evaluation is None or have.get("evaluation") == item.eval_fp else "evaluate"
        items.append(item)
    return items


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TrtqError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{exc.__class__.__name__}: {exc}{where}"


def build_task(job_json: dict, root: str, threads: int | None) -> tuple[str | None, float]:
    """One build without evaluation, in a worker process: (error or None, seconds)."""
    from ..pipeline.build import build

    check_terminated()  # queued before a SIGTERM reached this worker
    if threads:
        os.environ["TRTQ_THREADS"] = str(threads)
    t0 = time.perf_counter()
    try:
        build(Job.model_validate(job_json), Path(root), Progress())
        return None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - isolate the failure; the others go on (Ctrl-C stops the run)
        return _error_text(exc), time.perf_counter() - t0


def _without_evaluation(job: Job) -> dict:
    return job.model_copy(update={"evaluation": None}).model_dump(mode="json", by_alias=True)


class LocalExecutor:
    """Builds on a pool of ``workers`` processes; evaluations in this process, one at a time."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def builds(self, items: list[Item], done: Callable[[Item, str | None, float], None]) -> None:
        if self.workers == 1 or len(items) == 1:
            for it in items:
                err, secs = build_task(_without_evaluation(it.job), str(it.root), None)
                done(it, err, secs)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # no forked ONNX Runtime thread pools
        # a SIGTERM to the process group (CI time-outs) removes each worker's staging folder too
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=raise_on_sigterm) as pool:
            futures = {pool.submit(build_task, _without_evaluation(it.job), str(it.root), self.threads): it
                       for it in items}
            try:
                for f in as_completed(futures):
                    try:
                        err, secs = f.result()
                    except Exception as exc:  # noqa: BLE001 - a worker that died
                        err, secs = f"worker process failed: {_error_text(exc)}", 0.0
                    done(futures[f], err, secs)
            except BaseException:  # Ctrl-C, SIGTERM: start no further build
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def evaluate(self, item: Item, progress: Progress) -> tuple[str | None, float]:
        from ..pipeline.reevaluate import reevaluate

        t0 = time.perf_counter()
        try:
            reevaluate(item.job, item.root, progress)
            return None, time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - isolate the failure (Ctrl-C stops the run)
            return _error_text(exc), time.perf_counter() - t0


def run(jobs: list[tuple[Path, Job]], out_root: Path | None = None, force: bool = False, executor=None,
        progress: Progress | None = None, say: Callable[[str], None] = lambda s: None) -> list[Item]:
    """Build and evaluate ``jobs``; every item ends ``up to date``, ``built``, ``evaluated`` or ``failed``."""
    progress = progress or Progress()
    executor = executor or LocalExecutor()
    items = plan(jobs, out_root, force)
    for it in items:
        if it.action == "skip":
            it.status = "up to date"
            say(f"= {it.job.name}: up to date")
    to_build = [it for it in items if it.action == "build"]

    def built(it: Item, err: str | None, secs: float) -> None:
        it.seconds["build"] = round(secs, 2)
        if err is not None:
            it.status, it.error = "failed", err
            say(f"✗ {it.job.name}: build failed: {err}")
            return
        it.status = "built"
        fp.write(it.folder, {"build": it.build_fp, "evaluation": None, "versions": fp.versions()})
        say(f"✓ {it.job.name}: built in {secs:.1f} s")

    if to_build:
        executor.builds(to_build, built)
    for it in items:
        if it.status == "failed" or it.job.evaluation is None or it.action == "skip":
            continue
        if it.action == "evaluate":
            say(f"… {it.job.name}: build up to date; evaluating again (the evaluation changed)")
        err, secs = executor.evaluate(it, progress)
        it.seconds["evaluation"] = round(secs, 2)
        if err is not None:
            it.status, it.error = "failed", err
            say(f"✗ {it.job.name}: evaluation failed: {err}")
            continue
        it.status = "built" if it.action == "build" else "evaluated"
        fp.write(it.folder, {"build": it.build_fp, "evaluation": it.eval_fp, "versions": fp.versions()})
        say(f"✓ {it.job.name}: evaluated in {secs:.1f} s")
    return items


# -- summary ----------------------------------------------------------------------------------
def _row(it: Item) -> dict:
    row = {"job": it.job.name, "file": str(it.file), "status": it.status, "error": it.error,
           "method": it.job.calibrator.class_ or it.job.calibrator.method, "target": it.job.quantization.target,
           "model": Path(it.job.model).name, "folder": str(it.folder), "seconds": it.seconds}
    try:
        rep = json.loads((it.folder / REPORT_JSON).read_text()) if it.status != "failed" else {}
    except (OSError, json.JSONDecodeError):
        rep = {}
    acc32 = rep.get("fp32", {}).get("accuracy", {})
    acc8 = rep.get("int8", {}).get("accuracy", {})
    if "prequantized" in rep.get("quantization", {}):  # the model's own scales, not the calibrator's
        row["method"] = "pre-quantized"
    row.update({
        "fp32_top1": acc32.get("top1"), "int8_top1": acc8.get("top1"),
        "agreement": acc8.get("top1_agreement"),
        "sqnr_db": acc8.get("fidelity", {}).get("sqnr_db"),
        "latency_ratio": next(iter(rep.get("latency_ratio", {}).values()), None),
        "latency_batch": next(iter(rep.get("latency_ratio", {})), None),
        "calibration_samples": rep.get("calibration", {}).get("samples"),
    })
    return row


def summary(items: list[Item]) -> dict:
    rows = [_row(it) for it in items]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("built", "evaluated", "up to date", "failed")}
    return {"jobs": rows, "counts": counts}


SUMMARY_COLUMNS = ("job", "status", "model", "method", "target", "FP32 top-1", "INT8 top-1", "agreement", "SQNR dB",
                   "latency INT8/FP32")


def summary_cells(r: dict) -> tuple[str, ...]:
    """One job's row of the run summary, as text (summary.md and the terminal table)."""
    lat = "—" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}× (bs{r['latency_batch']})"
    sq = "—" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
    return (r["job"], r["status"], r["model"], r["method"], r["target"], pct(r["fp32_top1"]), pct(r["int8_top1"]),
            pct(r["agreement"]), sq, lat)


def summary_markdown(doc: dict) -> str:
    lines = ["# trtq run", "", ", ".join(f"{n} {k}" for k, n in doc["counts"].items() if n), "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(summary_cells(r)) + " |" for r in doc["jobs"]]
    failed = [r for r in doc["jobs"] if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{r['job']}` ({r['file']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_summary(doc: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic_group([(folder / SUMMARY_JSON, json.dumps(doc, indent=2) + "\n"),
                        (folder / SUMMARY_MD, summary_markdown(doc))])
