"""``trtq run --ray ADDRESS``: builds as Ray tasks, evaluations as Ray tasks one at a time.

* Each build is a task asking for ``--ray-cpus`` CPUs (default 1), and for a TensorRT target
  one GPU, of ``tensorrt.gpu_type`` when the job names one (Ray's ``accelerator_type``).
* A build task builds into a temporary folder on its node and returns the files; the driver
  writes them into the job's output folder atomically — so the cluster needs no shared
  filesystem for outputs. With ``--ray-shared`` (the output root is mounted on every node) the
  tasks write there directly instead. Model and data paths must be readable on every node (a shared mount,
  or the same paths everywhere), and trtq must be installed on the nodes.
* ``calibration.shards: N`` inside a Ray build runs the N shards as Ray tasks and merges their
  statistics; the result equals a single pass (the statistics merge exactly).
* Evaluations run after all builds, one at a time, each as a task on the node that has what the
  engine needs, so latency is never measured beside other trtq work.

``ADDRESS`` is ``local`` (start a Ray instance on this machine), ``auto`` (join the one running
here) or a cluster address (``ray://host:10001``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendError
from ..progress import Progress
from ..artifacts import staged_output
from ..job import Job
from .run import Item, _error_text, _without_evaluation

HINT = "install Ray with pip install 'trtq[ray]'"


def _ray():
    try:
        import ray
    except ImportError:
        raise BackendError(f"--ray needs Ray, which is not installed; {HINT}") from None
    return ray


def connect(address: str, num_cpus: int | None = None):
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError…
        raise BackendError(f"--ray {address}: cannot connect to Ray ({str(exc).splitlines()[0]}); start a cluster "
                           "('ray start --head') or use --ray local") from None
    return ray


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_tree(files: dict[str, bytes], folder: Path) -> None:
    for rel, data in files.items():
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def shard_map(fn: Callable, args: list[tuple]) -> list:
    """Run calibration shards as Ray tasks (called inside a Ray build task)."""
    ray = _ray()
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(*a) for a in args])


def _attempt(job: Job, work: Callable[[Path], None], shared_root: str | None,
             files: dict[str, bytes] | None = None) -> dict:
    """Run ``work(output root)`` for one job on a Ray node: in the shared root, or in a temporary
    root (seeded with ``files``) whose job folder comes back as bytes. Errors are returned, not
    raised: the driver reports them and the other jobs go on."""
    t0 = time.perf_counter()

    def run(root: Path, send_back: bool) -> dict:
        try:
            work(root)
        except Exception as exc:  # noqa: BLE001
            return {"error": _error_text(exc), "seconds": time.perf_counter() - t0}
        return {"error": None, "files": _read_tree(root / job.name) if send_back else None,
                "seconds": time.perf_counter() - t0}

    if shared_root is not None:  # the output root is mounted on every node: work there directly
        return run(Path(shared_root), send_back=False)
    with tempfile.TemporaryDirectory(prefix="trtq-ray-") as tmp:
        if files is not None:
            _write_tree(files, Path(tmp) / job.name)
        return run(Path(tmp), send_back=True)


def _build_remote(job_json: dict, shared_root: str | None = None) -> dict:
    from ..pipeline.build import build

    job = Job.model_validate(job_json)
    return _attempt(job, lambda root: build(job, root, Progress(), reuse=shared_root is not None, shard_map=shard_map),
                    shared_root)


def _evaluate_remote(job_json: dict, files: dict[str, bytes] | None, shared_root: str | None = None) -> dict:
    from ..pipeline.reevaluate import reevaluate

    job = Job.model_validate(job_json)
    return _attempt(job, lambda root: reevaluate(job, root, Progress()), shared_root, files)


def _resources(job: Job, cpus: int) -> dict:
    opts: dict = {"num_cpus": cpus}
    if job.quantization.target == "tensorrt":
        opts["num_gpus"] = 1
        if job.tensorrt.gpu_type:
            opts["accelerator_type"] = job.tensorrt.gpu_type
    return opts


class RayExecutor:
    """The executor interface of :class:`trtq.runs.run.LocalExecutor`, on Ray."""

    def __init__(self, address: str, cpus_per_build: int = 1, shared: bool = False):
        _ray()  # fail now, not after planning, when Ray is missing
        self.address = address
        self.cpus = cpus_per_build
        self.shared = shared  # the output root is on a filesystem every node mounts

    @property
    def ray(self):
        """Connected on first use: a re-run with nothing to do never starts Ray."""
        return connect(self.address)

    def builds(self, items: list[Item], done: Callable[[Item, str | None, float], None]) -> None:
        ray = self.ray
        remote = ray.remote(_build_remote)
        refs = {remote.options(**_resources(it.job, self.cpus)).remote(
            _without_evaluation(it.job), str(it.root.resolve()) if self.shared else None): it for it in items}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            it = refs[ready[0]]
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - the task or its worker died
                done(it, f"Ray task failed: {str(exc).splitlines()[0]}", 0.0)
                continue
            if out["error"] is None and out["files"] is not None:
                try:
                    with staged_output(it.root, it.job.name) as stage:
                        _write_tree(out["files"], stage)
                except Exception as exc:  # noqa: BLE001
                    out["error"] = _error_text(exc)
            done(it, out["error"], out["seconds"])

    def evaluate(self, item: Item, progress: Progress) -> tuple[str | None, float]:
        ray = self.ray
        remote = ray.remote(_evaluate_remote).options(**_resources(item.job, self.cpus))
        job_json = item.job.model_dump(mode="json", by_alias=True)
        try:
            if self.shared:
                out = ray.get(remote.remote(job_json, None, str(item.root.resolve())))
            else:
                out = ray.get(remote.remote(job_json, _read_tree(item.folder)))
        except Exception as exc:  # noqa: BLE001
            return f"Ray task failed: {str(exc).splitlines()[0]}", 0.0
        if out["error"] is None and out["files"] is not None:
            with staged_output(item.root, item.job.name) as stage:
                _write_tree(out["files"], stage)
        return out["error"], out["seconds"]
