"""Data sources (image folders, .npy/.npz files or folders, Python loaders) and batching.

A source yields :class:`Sample` objects one at a time — nothing holds the whole data set — and
:func:`batches` checks each sample against the model's inputs and stacks them into batches.
Batches are formed from individual samples, so what a consumer sees does not depend on how a
loader happened to batch its data.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, TrtqError, one_line
from ..job import DataSpec
from ..model.load import InputSpec, fixed_batch
from ..plugins import import_callable
from .preprocess import load_image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LABEL_KEYS = ("labels", "label", "y")


@dataclass
class Sample:
    id: str
    feeds: dict[str, np.ndarray]  # one sample, no batch dimension
    label: int | None = None


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> str:
        """The samples of the batch, for messages: 'sample a.png' or 'samples a.png … h.png'."""
        return f"sample {self.ids[0]}" if len(self.ids) == 1 else f"samples {self.ids[0]} … {self.ids[-1]}"


@dataclass
class Source:
    """An iterable of samples with what is known about it up front."""

    description: str
    samples: Iterable[Sample]
    count: int | None  # None when unknown until read (loaders)
    has_labels: bool
    files: list[Path] = field(default_factory=list)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


def _single_input(spec: DataSpec, inputs: list[InputSpec], section: str) -> str:
    names = [i.name for i in inputs if i.constant is None]  # inputs the job gives a value are not data
    if spec.input is not None:
        if spec.input not in names:
            raise DataError(f"{section}.input: '{spec.input}' is not a model input; inputs: {', '.join(names)}")
        return spec.input
    if len(names) != 1:
        raise DataError(f"{section}.input: the model has inputs {', '.join(names)}; name the one this data feeds")
    return names[0]


def _read_labels(csv_path: Path, section: str) -> dict[str, int]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: labels CSV needs the columns 'file,class_index'")
            rows = [(row["file"], row["class_index"]) for row in reader]
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read labels ({exc.strerror}); check {section}.labels") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({one_line(exc)}); write 'file,class_index' rows") from None
    labels = {}
    for n, (file, text) in enumerate(rows, start=2):
        if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,9}", text.strip()):
            raise DataError(f"{csv_path}:{n}: class_index {_short(text)} is not a class index; every class_index must "
                            "be an integer ≥ 0")
        labels[file] = int(text)
    return labels


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def class_indices(values, where: str) -> np.ndarray:
    """Labels as int64 class indices; fractional, negative or non-numeric labels are refused
    (they would be silently truncated or index the wrong class)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        raise DataError(f"{where}: labels are {arr.dtype} of shape {arr.shape}; give one integer class index per sample")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise DataError(f"{where}: labels hold fractional or non-finite values; give integer class indices")
    if arr.size and arr.min() < 0:
        raise DataError(f"{where}: labels hold {arr.min()}; class indices must be ≥ 0")
    return arr.astype(np.int64)


def _image_source(spec: DataSpec, inputs: list[InputSpec], section: str) -> Source:
    folder = spec.path
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    name = _single_input(spec, inputs, section)
    if spec.labels == "none":
        labels_path, labels = None, None
    else:
        labels_path = spec.labels or (folder / "labels.csv")
        labels = _read_labels(labels_path, section) if (spec.labels or labels_path.is_file()) else None
    if labels is not None:
        missing = [p.name for p in files if p.name not in labels]
        if missing:
            raise DataError(f"{labels_path}: no label for {len(missing)} image(s), e.g. {missing[0]}; add them or remove the images")

    def gen():
        for p in files:
            yield Sample(p.name, {name: load_image(p, spec.preprocess)}, labels[p.name] if labels else None)

    return Source(f"images in {folder}", gen(), len(files), labels is not None, files)


def _array_samples(path: Path, spec: DataSpec, inputs: list[InputSpec], section: str) -> tuple[int, bool, Iterator[Sample]]:
    names = {i.name for i in inputs}
    try:
        if path.suffix == ".npy":
            arrays = {_single_input(spec, inputs, section): np.load(path, mmap_mode="r", allow_pickle=False)}
            labels = None
        else:
            npz = np.load(path, allow_pickle=False)
            keys = list(npz.files)
            label_key = next((k for k in LABEL_KEYS if k in keys and k not in names), None)
            data_keys = [k for k in keys if k != label_key]
            if any(k in names for k in data_keys):
                arrays = {k: npz[k] for k in data_keys}
            elif len(data_keys) == 1:
                arrays = {_single_input(spec, inputs, section): npz[data_keys[0]]}
            else:
                raise DataError(f"{path}: arrays {', '.join(data_keys)} match no model input ({', '.join(sorted(names))}); name them after the inputs")
            labels = npz[label_key] if label_key and spec.labels != "none" else None  # labels: none ignores them
        labels = class_indices(labels, str(path)) if labels is not None else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise a dozen kinds on damaged files
        raise DataError(f"{path}: cannot read array file ({one_line(exc, 120)}); give a .npy or .npz written by numpy") from None
    lengths = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(lengths.values())) != 1 or (labels is not None and len(labels) != next(iter(lengths.values()))):
        raise DataError(f"{path}: arrays have different first dimensions {lengths}; all must hold the same samples")
    n = next(iter(lengths.values()))

    def gen():
        for i in range(n):
            try:
                feeds = {k: np.asarray(a[i]) for k, a in arrays.items()}
            except (OSError, ValueError) as exc:  # a memory-mapped .npy shorter than its header says
                raise DataError(f"{path}: cannot read sample {i} ({one_line(exc, 120)})") from None
            yield Sample(f"{path.name}[{i}]", feeds, int(labels[i]) if labels is not None else None)

    return n, labels is not None, gen()


def _array_source(spec: DataSpec, inputs: list[InputSpec], section: str) -> Source:
    path = spec.path
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    parts = [_array_samples(p, spec, inputs, section) for p in files]
    has_labels = bool(parts) and all(p[1] for p in parts)
    return Source(f"arrays in {path}", itertools.chain.from_iterable(p[2] for p in parts),
                  sum(p[0] for p in parts), has_labels, files)


def _loader_batches(fn, spec: DataSpec, section: str) -> Iterator[tuple[int, object]]:
    """``fn()``'s batches, numbered; what the loader raises (calling it or mid-stream) becomes
    a one-line error naming the loader and the batch."""
    where = f"{section}.loader: '{spec.loader}'"
    try:
        it = iter(fn())
    except Exception as exc:  # noqa: BLE001 - user code
        raise DataError(f"{where} raised {one_line(exc)} when called; fix the loader") from None
    for b in itertools.count():
        try:
            batch = next(it)
        except StopIteration:
            return
        except TrtqError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise DataError(f"{where} raised {one_line(exc)} producing batch {b}; fix the loader") from None
        yield b, batch


def _loader_source(spec: DataSpec, inputs: list[InputSpec], section: str) -> Source:
    fn = import_callable(spec.loader, f"{section}.loader")
    names = {i.name for i in inputs}

    def gen():
        for b, batch in _loader_batches(fn, spec, section):
            if not isinstance(batch, dict):
                raise DataError(f"{section}.loader: batch {b} is a {type(batch).__name__}; yield dicts {{input_name: array}}")
            label_key = next((k for k in LABEL_KEYS if k in batch and k not in names), None)
            arrays = {k: np.asarray(v) for k, v in batch.items() if k != label_key}
            n = {len(a) if a.ndim else 0 for a in arrays.values()}
            if len(n) != 1:
                raise DataError(f"{section}.loader: batch {b} has arrays of different batch sizes; all must match")
            labels = class_indices(batch[label_key], f"{section}.loader: batch {b}") if label_key else None
            for i in range(n.pop()):
                label = int(labels[i]) if label_key else None
                yield Sample(f"batch{b}[{i}]", {k: a[i] for k, a in arrays.items()}, label)

    return Source(f"loader {spec.loader}", gen(), None, False)


def open_source(spec: DataSpec, inputs: list[InputSpec], section: str) -> Source:
    """Open the data a job section names; errors name ``section`` keys."""
    if spec.loader is not None:
        return _loader_source(spec, inputs, section)
    path = spec.path
    if not path.exists():
        raise DataError(f"{section}.path: {path} does not exist; point it at an image folder, a .npy/.npz file or folder")
    if path.is_file():
        if path.suffix not in (".npy", ".npz"):
            raise DataError(f"{section}.path: {path} is neither a folder nor a .npy/.npz file")
        source = _array_source(spec, inputs, section)
    else:
        entries = [p for p in path.iterdir() if p.is_file()]
        if any(p.suffix.lower() in IMAGE_EXTS for p in entries):
            source = _image_source(spec, inputs, section)
        elif any(p.suffix in (".npy", ".npz") for p in entries):
            source = _array_source(spec, inputs, section)
        else:
            raise DataError(f"{section}.path: {path} holds no images or .npy/.npz files; the data source is empty")
    if source.count == 0:
        raise DataError(f"{section}.path: {path} holds no samples; the data source is empty")
    return source


def _check_sample(sample: Sample, inputs: list[InputSpec], section: str) -> dict[str, np.ndarray]:
    expected = {i.name: i for i in inputs}
    got = set(sample.feeds)
    required = {i.name for i in inputs if i.constant is None}
    if not required <= got <= set(expected):
        missing, extra = sorted(required - got), sorted(got - set(expected))
        detail = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
                 (f"unknown {', '.join(extra)}" if extra else "")
        raise DataError(f"{section}: sample {sample.id}: input names don't match the model ({detail}); model inputs: {', '.join(expected)}")
    out = {}
    for name, arr in sample.feeds.items():
        spec = expected[name]
        want = spec.sample_shape()
        if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
            shown = "x".join("?" if w is None else str(w) for w in want)
            raise DataError(f"{section}: sample {sample.id}: tensor '{name}' has shape {'x'.join(map(str, arr.shape))}, "
                            f"the model wants {shown} per sample; fix the data or its preprocessing")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{section}: sample {sample.id}: tensor '{name}' contains NaN or Inf; clean the data")
        if arr.dtype != spec.dtype:
            if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                raise DataError(f"{section}: sample {sample.id}: tensor '{name}' is {arr.dtype}, the model wants {spec.dtype}")
            _check_fits(arr, spec.dtype, f"{section}: sample {sample.id}: tensor '{name}'")
            arr = arr.astype(spec.dtype)
        out[name] = arr
    return out


def stack_samples(samples: list[dict[str, np.ndarray]], ids: list[str], inputs: list[InputSpec],
                  section: str) -> dict[str, np.ndarray]:
    """One batch: each input's samples stacked on its batch axis; an input without one fed as the
    samples hold it (all equal); the job's constant inputs repeated."""
    feeds = {}
    for spec in inputs:
        values = [s.get(spec.name, spec.constant) for s in samples]
        if spec.batch_axis is None:
            if any(v.shape != values[0].shape or not np.array_equal(v, values[0]) for v in values[1:]):
                raise DataError(f"{section}: input '{spec.name}' has no batch axis, but samples {ids[0]} and "
                                f"{ids[-1]} of one batch give it different values; set {section}.batch_size: 1, "
                                f"or inputs.{spec.name}.batch_axis")
            feeds[spec.name] = values[0]
            continue
        feeds[spec.name] = np.stack(values, axis=spec.batch_axis)  # one shape: batches() groups samples by shape
    return feeds


def _check_fits(arr: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Finite values beyond the model's float type would turn into Inf when cast (float64 1e39
    → float32 inf, int 70000 → float16 inf): refuse them, naming the value."""
    if dtype.kind != "f" or arr.dtype.kind not in "iuf" or arr.size == 0:
        return
    if arr.dtype.kind == "f" and arr.dtype.itemsize <= dtype.itemsize:
        return
    peak = float(max(-float(np.min(arr)), float(np.max(arr))))
    limit = float(np.finfo(dtype).max)
    if peak > limit:
        raise DataError(f"{what} holds {peak:.3g}, beyond the {dtype} range of the model (±{limit:.3g}); "
                        "rescale the data")


def sample_digest(feeds: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for k in sorted(feeds):
        h.update(k.encode())
        h.update(np.ascontiguousarray(feeds[k]).tobytes())
    return h.digest()


MAX_PENDING_SHAPES = 16  # sample shapes waiting for a full batch at once; past it the oldest is flushed short


def batches(source: Source, inputs: list[InputSpec], batch_size: int, section: str,
            skip: int = 0, max_samples: int | None = None, digest: "hashlib._Hash | None" = None,
            note: Callable[[str], None] | None = None) -> Iterator[Batch]:
    """Check samples and stack them into batches of ``batch_size``.

    Samples of different shapes (images of several sizes under a dynamic height/width) go into
    separate batches: each batch holds samples of one shape, in their order, and a shape's
    short remainder comes at the end. A model with a fixed batch size cannot run a short batch:
    its remainder is left out and ``note`` says how many samples that was.

    ``digest``, when given, is updated with every sample's SHA-256 (:func:`sample_digest`) in
    order, so the data fingerprint depends neither on the batch size nor on how the samples
    are split into shards (the shards' digests, concatenated, give the same hash).
    """
    stop = None if max_samples is None else skip + max_samples
    selected = itertools.islice(source, skip, stop)
    fixed = fixed_batch(inputs)
    pending: dict[tuple, list[tuple[str, dict[str, np.ndarray], int | None]]] = {}
    counts = {"yielded": 0, "dropped": 0}

    def flush(buf) -> Batch | None:
        if fixed is not None and len(buf) != fixed:
            counts["dropped"] += len(buf)
            return None
        feeds = stack_samples([b[1] for b in buf], [b[0] for b in buf], inputs, section)
        have = all(b[2] is not None for b in buf)
        labels = np.array([b[2] for b in buf], dtype=np.int64) if have else None
        counts["yielded"] += len(buf)
        return Batch(feeds, labels, [b[0] for b in buf])

    for sample in selected:
        feeds = _check_sample(sample, inputs, section)
        if digest is not None:
            digest.update(sample_digest(feeds))
        key = tuple(sorted((k, v.shape) for k, v in feeds.items()))
        if key not in pending and len(pending) >= MAX_PENDING_SHAPES:
            out = flush(pending.pop(next(iter(pending))))
            if out is not None:
                yield out
        buf = pending.setdefault(key, [])
        buf.append((sample.id, feeds, sample.label))
        if len(buf) == batch_size:
            out = flush(pending.pop(key))
            if out is not None:
                yield out
    for buf in pending.values():
        out = flush(buf)
        if out is not None:
            yield out
    if counts["dropped"] and note is not None:
        note(f"{section}: {counts['dropped']} sample(s) left out: the model's batch size is fixed to {fixed} and "
             "they do not fill a batch")
    if counts["yielded"] == 0:
        if counts["dropped"]:
            raise DataError(f"{section}: {counts['dropped']} sample(s), fewer than the model's fixed batch of "
                            f"{fixed}; give at least {fixed} samples")
        raise DataError(f"{section}: no samples left after skip={skip}; the data source is empty")


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produce ``items`` on a background thread, ``depth`` ahead, so reading and decoding data
    (which releases the GIL) overlaps with inference. Exceptions surface in the consumer, in
    order; abandoning the iterator stops the producer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, daemon=True, name="trtq-prefetch")
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()


def planned_count(source: Source, skip: int, max_samples: int | None) -> int | None:
    if source.count is None:
        return max_samples
    n = max(0, source.count - skip)
    return n if max_samples is None else min(n, max_samples)
