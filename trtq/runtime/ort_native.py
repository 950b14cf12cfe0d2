"""Exposing a model's tensors for calibration in ONNX Runtime's own CPU layout.

With all optimizations on, ORT's CPU provider runs convolutions on channel-blocked NCHWc
tensors. A tensor made a graph output is converted back to NCHW by a ``ReorderOutput`` node on
every run: for EfficientNet-Lite0's 59 quantized activations that is ~28 MB copied per image,
about a third of a plain inference pass. Statistics do not need NCHW order — min/max and the
histogram ignore order, channel sums need only each value's channel — so :func:`expose`
optimizes the exposed model once, removes the ``ReorderOutput`` nodes in front of exposed
tensors and hands out their NCHWc input instead, to be folded by
``TensorStats.update(..., block=b)``.

The block size is read from a probe model whose NCHWc output is checked value for value
against ORT's own reorder. Where anything does not fit — no NCHWc on this CPU, channels not a
multiple of the block, channels not on axis 1, a model too large to re-serialize, another
node reading the NCHW tensor — the tensor is exposed the ordinary way.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import one_line
from ..model.load import expose_tensors
from .onnxruntime import BoundRunner, session

NCHWC = "com.microsoft.nchwc"
_MAX_BYTES = 1 << 30  # above this a model is exposed the ordinary way (no optimized copy)


@dataclass
class Exposure:
    """A model to run for calibration and where each tensor's values come out."""

    model: onnx.ModelProto
    optimized: bool = False  # already optimized for this CPU: load it without optimizing again
    outputs: dict[str, str] = field(default_factory=dict)  # tensor -> graph output holding its values
    blocks: dict[str, int] = field(default_factory=dict)  # tensor -> NCHWc block size (absent: NCHW)
    fallback: str | None = None  # why no tensor is read in NCHWc layout, when none is and it was asked for


def expose_plain(model: onnx.ModelProto, tensors: list[str]) -> Exposure:
    """``model`` with ``tensors`` (graph inputs excepted) added to its outputs, as they are."""
    return Exposure(expose_tensors(model, tensors), outputs={t: t for t in tensors})


def expose(model: onnx.ModelProto, tensors: list[str], channel_axes: dict[str, int | None],
           native: bool = True) -> Exposure:
    """``tensors`` exposed with as many as possible in ORT's NCHWc layout (``native`` False, or
    nothing fits: :func:`expose_plain`). ``channel_axes``: the axis whose per-channel sums are
    collected, per tensor (a tensor whose axis is not 1 stays NCHW)."""
    plain = expose_plain(model, tensors)
    if not native:
        return plain
    block, why = probe()
    if not block:
        plain.fallback = why
        return plain
    if plain.model.ByteSize() > _MAX_BYTES:
        plain.fallback = f"the exposed model is over {_MAX_BYTES >> 30} GB; it is not re-serialized optimized"
        return plain
    try:
        optimized = _optimized(plain.model)
    except Exception as exc:  # noqa: BLE001 - any failure here only means the ordinary path (said in the report)
        plain.fallback = f"optimizing the exposed model failed ({one_line(exc)})"
        return plain
    wanted = {t for t in tensors if channel_axes.get(t) in (None, 1)}
    native_exposure = _unreorder(optimized, tensors, wanted, block)
    if native_exposure is None:
        plain.fallback = "no exposed tensor is in ONNX Runtime's NCHWc layout"
        return plain
    return native_exposure


class ExposedRunner:
    """``run(feeds, tensors)`` → the arrays of ``tensors`` (NCHWc ones in blocked order), through
    a :class:`BoundRunner`: valid until the next call."""

    def __init__(self, exposure: Exposure, threads: int | None = None):
        self.exposure = exposure
        self._run = BoundRunner(session(exposure.model, threads=threads, optimize=not exposure.optimized,
                                        spin=False))

    def __call__(self, feeds: dict[str, np.ndarray], tensors: list[str]) -> list[np.ndarray]:
        outputs = self.exposure.outputs
        names = list(dict.fromkeys(outputs[t] for t in tensors))
        got = dict(zip(names, self._run(feeds, names)))
        return [got[outputs[t]] for t in tensors]


def _optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as ORT optimizes it for this CPU (all levels, NCHWc included)."""
    with tempfile.TemporaryDirectory(prefix="trtq-ort-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        session(model, optimize=True, optimized_path=path)
        return onnx.load(str(path))


def _unreorder(opt: onnx.ModelProto, tensors: list[str], wanted: set[str], block: int) -> Exposure | None:
    """Drop the ``ReorderOutput`` nodes that only turn an exposed tensor back into NCHW; expose
    their NCHWc inputs instead. None when no tensor qualifies."""
    graph = opt.graph
    consumed = {i for n in graph.node for i in n.input}
    reorders = {}  # exposed tensor -> (index of its ReorderOutput node, that node's NCHWc input)
    for i, node in enumerate(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out = node.output[0] if node.output else ""
        if (node.op_type == "ReorderOutput" and node.domain == NCHWC and out in wanted and out not in consumed
                and not attrs.get("channels_last", 0) and attrs.get("channels", 0) % block == 0):
            reorders[out] = (i, node.input[0])
    if not reorders:
        return None
    for i, _ in sorted(reorders.values(), reverse=True):
        del graph.node[i]
    outputs, blocks = {}, {}
    present = {o.name for o in graph.output}
    for t, (_, src) in reorders.items():
        outputs[t], blocks[t] = src, block
        if src not in present:
            graph.output.append(helper.make_tensor_value_info(src, TensorProto.FLOAT, None))
            present.add(src)
    for i in reversed(range(len(graph.output))):
        if graph.output[i].name in reorders:
            del graph.output[i]
    for t in tensors:
        outputs.setdefault(t, t)
    return Exposure(opt, optimized=True, outputs=outputs, blocks=blocks)


def block_size() -> int:
    """ORT's NCHWc block size on this CPU; 0 when ORT does not use NCHWc here (see :func:`probe`)."""
    return probe()[0]


@functools.lru_cache(maxsize=1)
def probe() -> tuple[int, str | None]:
    """(ORT's NCHWc block size on this CPU, None), read from a probe convolution and checked
    value for value against ORT's own reorder to NCHW; (0, why) when ORT does not use NCHWc
    here or the check fails."""
    channels, side = 64, 3
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="probe")], "nchwc_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"x": rng.standard_normal((1, channels, side, side)).astype(np.float32)}
    try:
        opt = _optimized(model)
        ref = session(opt, optimize=False).run(["y"], feeds)[0]
        exposure = _unreorder(opt, ["y"], {"y"}, 1)  # any block divides 64: the raw data, whatever the block
        if exposure is None:
            return 0, "ONNX Runtime uses no NCHWc layout on this CPU"  # (or a layout this module does not know)
        raw = ExposedRunner(exposure)(feeds, ["y"])[0]
    except Exception as exc:  # noqa: BLE001 - no native layout, then (said in the report)
        return 0, f"the NCHWc layout probe failed ({one_line(exc)})"
    for block in (4, 8, 16, 32, 64):
        blocked = ref.reshape(1, channels // block, block, side * side).transpose(0, 1, 3, 2)
        if raw.shape == ref.shape and np.array_equal(raw.ravel(), blocked.ravel()):
            return block, None
    return 0, "ONNX Runtime's NCHWc data matched no known block layout"
