"""Many jobs from one command: job files and folders of them, and ``sweep:`` expansion.

A job file may carry a ``sweep:`` mapping of dotted keys to lists of values; the job expands
into the cartesian product, in the order the keys are written, each named
``<name>-<value>-<value>…`` (a path value contributes its file stem)::

    name: cls
    sweep:
      calibrator.method: [entropy, percentile, mse]
      model: [models/a.onnx, models/b.onnx]

gives ``cls-entropy-a``, ``cls-entropy-b``, ``cls-percentile-a``, … Swept values are placed in
the mapping before validation, so relative paths resolve against the job file as if written there.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections import Counter
from pathlib import Path

from ..errors import JobError
from ..job import DOTTED_KEY, PATH_KEYS, Job, job_from_data, read_job_data

MAX_POINTS = 1000  # sweep points one file may expand to
MAX_SLUG = 64  # characters of a swept value in a job name


def _slug(key: tuple[str, ...], value) -> str:
    text = str(value)[:4 * MAX_SLUG]
    text = Path(text).stem if key in PATH_KEYS or key[-1] in ("loader", "class") else text
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_")[:MAX_SLUG] or "x"


def _set(data: dict, key: tuple[str, ...], value, path: Path) -> None:
    node = data
    for i, part in enumerate(key[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise JobError(f"{path}: sweep.{'.'.join(key)}: {'.'.join(key[:i + 1])} is not a section")
    node[key[-1]] = copy.deepcopy(value)


def expand(data: dict, path: Path) -> list[tuple[str, dict]]:
    """(name, job mapping) for each point of the sweep; one entry when there is none."""
    sweep = data.get("sweep")
    base = {k: v for k, v in data.items() if k != "sweep"}
    if sweep is None:
        return [(str(base.get("name", "")), base)]
    if not isinstance(sweep, dict) or not sweep:
        raise JobError(f"{path}: sweep: must map job keys to lists of values, e.g. calibrator.method: [entropy, mse]")
    keys = []
    for dotted, values in sweep.items():
        if not isinstance(dotted, str) or not DOTTED_KEY.match(dotted):
            raise JobError(f"{path}: sweep: {dotted!r} is not a dotted job key like calibrator.method")
        if dotted == "name":
            raise JobError(f"{path}: sweep.name: names come from the swept values; sweep other keys")
        if not isinstance(values, list) or not values:
            raise JobError(f"{path}: sweep.{dotted}: give a non-empty list of values")
        keys.append((tuple(dotted.split(".")), values))
    points = math.prod(len(values) for _, values in keys)
    if points > MAX_POINTS:
        raise JobError(f"{path}: sweep: {points} points (the product of the list lengths), more than {MAX_POINTS}; "
                       "split the sweep into several files")
    out = []
    for combo in itertools.product(*(values for _, values in keys)):
        job = copy.deepcopy(base)
        for (key, _), value in zip(keys, combo):
            _set(job, key, value, path)
        name = "-".join([str(base.get("name", "job"))] + [_slug(key, v) for (key, _), v in zip(keys, combo)])
        job["name"] = name
        out.append((name, job))
    dupes = sorted(n for n, count in Counter(n for n, _ in out).items() if count > 1)
    if dupes:
        raise JobError(f"{path}: sweep: two points of the sweep are both named '{dupes[0]}'; make the values distinct")
    return out


def job_files(paths: list[str | Path]) -> list[Path]:
    """Job files named, and the ``*.yaml``/``*.yml`` files in folders named (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise JobError(f"{p}: no job files (*.yaml) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise JobError(f"{p}: no such job file or folder")
    return files


def load_jobs(paths: list[str | Path], overrides: list[str] = ()) -> list[tuple[Path, Job]]:
    """Every job the paths describe, sweeps expanded; names must be unique across them."""
    jobs: list[tuple[Path, Job]] = []
    seen: dict[str, Path] = {}
    for file in job_files(paths):
        for name, data in expand(read_job_data(file), file):
            job = job_from_data(data, file, overrides)
            if job.name in seen:
                raise JobError(f"{file}: job '{job.name}' is also defined by {seen[job.name]}; names must be unique "
                               "(each names its output folder)")
            seen[job.name] = file
            jobs.append((file, job))
    return jobs
