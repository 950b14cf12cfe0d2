"""Narrow activation channels: found from per-channel moments of the calibration data, and
widened by activation-channel equalization (:mod:`trtq.model.equalize`) where the graph allows.

A short pre-pass (the first ``samples`` calibration samples) runs the FP32 model with the
tensors that feed grouped/depthwise convolutions exposed — and what each convolution's output
becomes before anything mixes its channels (the output, or the BatchNormalization behind it) —
and keeps, per channel, max |x|, the mean and the mean square. A channel whose standard
deviation is below one int8 step of its tensor (max |x| / 127) carries less signal than
quantization removes: it is *narrow*. What that costs shows downstream: INT8 loses the narrow
channel's variation, which reaches the convolution's output (and the BatchNormalization's) as
about ``σ²_c · max(Σw_c², (Σw_c)²) · g_c²`` — its filter ``w_c`` taken as white or as coherent
as it can be, ``g_c`` the BatchNormalization's gain — against the output's total power, which
caps that tensor's SQNR. A finding is reported when the cap is below ``CAP_DB`` (a channel that
is narrow but negligible downstream costs nothing; its mean, which INT8 keeps, does not count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..data.sources import batches, open_source
from ..job import DataSpec
from ..model import equalize
from ..model.load import expose_tensors
from ..model.prepare import PreparedModel
from ..model.plan import plan_quantization
from ..progress import Progress
from ..runtime.onnxruntime import Runner, session

SAMPLES = 16  # calibration samples the pre-pass reads
CAP_DB = 20.0  # report narrow channels that cap the downstream SQNR below this


@dataclass
class Moments:
    absmax: np.ndarray
    mean: np.ndarray
    meansq: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.meansq - self.mean ** 2, 0.0))

    def scaled(self, s: np.ndarray) -> Moments:
        return Moments(self.absmax * s, self.mean * s, self.meansq * s * s)


@dataclass
class Link:
    """A depthwise Conv reading a quantized tensor, and what follows before channels mix."""

    after: str  # the Conv's output, or the BatchNormalization's behind it
    gain: np.ndarray  # per input channel: max(Σw², (Σw)²) of its filters × the BatchNormalization's gain²


def _gain(conv: onnx.NodeProto, bn: onnx.NodeProto | None, inits: dict, channels: int) -> np.ndarray | None:
    if conv.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    group = next((helper.get_attribute_value(a) for a in conv.attribute if a.name == "group"), 1)
    k, cin = w.shape[0], w.shape[1]
    if group != channels or cin != 1:
        return None  # a grouped Conv that mixes several input channels per output: not this estimate
    flat = w.reshape(k, -1)
    g = np.maximum((flat ** 2).sum(axis=1), flat.sum(axis=1) ** 2)
    if bn is not None and all(i in inits for i in (bn.input[1], bn.input[4])):
        eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, var = (numpy_helper.to_array(inits[bn.input[i]]).astype(np.float64) for i in (1, 4))
        g = g * (scale / np.sqrt(var + eps)) ** 2
    return g.reshape(channels, k // channels).sum(axis=1)  # an input channel's filters (multiplier m)


def depthwise_inputs(model: onnx.ModelProto, tensors: list[str]) -> dict[str, Link]:
    """Quantized tensor read by a depthwise Conv (one input channel per filter) → :class:`Link`."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input[:1]:
            readers.setdefault(i, []).append(n)
    inits = {i.name: i for i in model.graph.initializer}
    group_of = {n.name: next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
                for n in model.graph.node}
    out = {}
    for t in tensors:
        for n in readers.get(t, []):
            if n.op_type != "Conv" or group_of[n.name] <= 1 or t in out:
                continue
            nxt = readers.get(n.output[0], [])
            bn = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "BatchNormalization" else None
            gain = _gain(n, bn, inits, group_of[n.name])
            if gain is not None:
                out[t] = Link(bn.output[0] if bn is not None else n.output[0], gain)
    return out


def _exposed(run: Runner, tensors: list[str], data: list):
    """The values of ``tensors`` for each batch of ``data`` (``run`` exposes them)."""
    for batch in data:
        names = [t for t in tensors if t not in batch.feeds]
        got = dict(zip(names, run(batch.feeds, names)))
        got.update({t: batch.feeds[t] for t in tensors if t in batch.feeds})
        yield got


def _runner(prepared: PreparedModel, tensors: list[str]) -> Runner:
    return Runner(session(expose_tensors(prepared.model, tensors), spin=False))


def _channel_sum(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=tuple(i for i in range(x.ndim) if i != 1), dtype=np.float64)


def moments(run: Runner, tensors: list[str], data: list) -> dict[str, Moments]:
    """Per-channel (axis 1) max |x|, mean and mean square of ``tensors`` over the batches ``data``."""
    sums: dict[str, list] = {}
    for got in _exposed(run, tensors, data):
        for t in tensors:
            x = np.asarray(got[t], np.float32)
            axes = tuple(i for i in range(x.ndim) if i != 1)
            part = [np.abs(x).max(axis=axes).astype(np.float64), _channel_sum(x), _channel_sum(np.square(x)),
                    x.size // x.shape[1]]
            if t in sums:
                old = sums[t]
                part = [np.maximum(old[0], part[0]), old[1] + part[1], old[2] + part[2], old[3] + part[3]]
            sums[t] = part
    return {t: Moments(a, s / n, q / n) for t, (a, s, q, n) in sums.items()}


def quantization_error(run: Runner, data: list, stats: dict[str, Moments],
                       scales: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Per channel, the mean square error symmetric int8 (one scale per tensor, its max |x| / 127)
    makes on each tensor — as it is, and with ``scales`` applied (referred back to the unscaled
    values, ÷ s²)."""
    tensors = list(stats)
    sums: dict[str, list] = {t: [0.0, 0.0, 0] for t in tensors}
    for got in _exposed(run, tensors, data):
        for t in tensors:
            x = np.asarray(got[t], np.float32)
            step = np.float32(max(float(stats[t].absmax.max(initial=0.0)), 1e-30) / 127.0)
            acc = sums[t]
            acc[0] = acc[0] + _channel_sum(np.square(x - np.clip(np.round(x / step), -127, 127) * step))
            if t in scales:
                s = scales[t].astype(np.float32).reshape([1, -1] + [1] * (x.ndim - 2))
                y = x * s
                acc[1] = acc[1] + _channel_sum(np.square((y - np.clip(np.round(y / step), -127, 127) * step) / s))
            acc[2] += x.size // x.shape[1]
    return {t: (e / n, (a / n if t in scales else None)) for t, (e, a, n) in sums.items()}


def _narrow(m: Moments) -> np.ndarray:
    step = m.absmax.max(initial=0.0) / 127.0
    return np.nonzero((m.std < step) & (m.absmax > 0))[0] if step > 0 else np.array([], int)


def _cap_db(err: np.ndarray, link: Link, downstream: Moments, channels: np.ndarray) -> float | None:
    """The SQNR ``link.after`` keeps at most when the error of ``channels`` reaches it."""
    if channels.size == 0:
        return None
    lost = float((err[channels] * link.gain[channels]).sum())
    total = float((downstream.std ** 2).sum())
    return float("inf") if lost <= 0 else 10 * float(np.log10(max(total, 1e-300) / lost))


def findings(stats: dict[str, Moments], links: dict[str, Link], errors: dict[str, tuple],
             scales: dict[str, np.ndarray]) -> list[dict]:
    """Tensors whose narrow channels cap the SQNR downstream below ``CAP_DB``: which channels,
    where, the cap, and — when equalization widened them — the cap after it."""
    out = []
    for t, link in links.items():
        narrow = _narrow(stats[t])
        err, err_after = errors[t]
        cap = _cap_db(err, link, stats[link.after], narrow)
        if cap is None or cap >= CAP_DB:
            continue
        row = {"tensor": t, "channels": [int(c) for c in narrow], "of": int(stats[t].absmax.size), "at": link.after,
               "sqnr_cap_db": cap, "equalized": t in scales}
        if t in scales:
            after = _cap_db(err_after, link, stats[link.after], narrow)
            row["sqnr_cap_after_db"] = after
            row["narrow_after"] = row["channels"] if after is not None and after < CAP_DB else []
        out.append(row)
    return out


def equalize_channels(prepared: PreparedModel, spec: DataSpec, enabled: bool, exclude_ops=(), exclude_nodes=(),
                      samples: int = SAMPLES, progress: Progress | None = None,
                      ) -> tuple[PreparedModel, dict[str, np.ndarray], list[dict]]:
    """(the prepared model — equalized where that is possible and ``enabled`` —, the scales per
    tensor, the narrow-channel findings after equalization). ``exclude_*``: the job's, to plan
    the rewritten model the same way."""
    links = depthwise_inputs(prepared.model, prepared.plan.activations)
    if not links:
        return prepared, {}, []
    with (progress or Progress()).task(f"checking the channels of {len(links)} depthwise inputs", None):
        exposed = list(dict.fromkeys([*links, *(k.after for k in links.values())]))
        run = _runner(prepared, exposed)
        data = list(batches(open_source(spec, prepared.inputs, "calibration"), prepared.inputs, spec.batch_size,
                            "calibration", spec.skip, samples))  # read once, for both passes
        stats = moments(run, exposed, data)
        candidates: dict[str, np.ndarray] = {}
        for t in links if enabled else ():
            s = equalize.widen(stats[t].absmax)
            if np.any(s > 1) and equalize.absorbable(prepared.model.graph, t) is None:
                candidates[t] = s
        errors = quantization_error(run, data, {t: stats[t] for t in links}, candidates)
    # only where narrow channels really cap the output (the findings): widening costs headroom, and scales
    # from a few samples can overshoot on others (measured: the PP-OCR classifier, unflagged, lost 5 dB)
    found = findings(stats, links, errors, candidates)
    scales = {f["tensor"]: candidates[f["tensor"]] for f in found if f["equalized"]}
    if scales:
        prepared = with_scales(prepared, scales, exclude_ops, exclude_nodes)
    return prepared, scales, found


def with_scales(prepared: PreparedModel, scales: dict[str, np.ndarray], exclude_ops=(),
                exclude_nodes=()) -> PreparedModel:
    """``prepared`` with ``scales`` applied (``trtq eval`` re-applies a build's), re-planned: the
    same nodes and tensors, new weight initializers."""
    model = equalize.apply(prepared.model, scales)
    plan = plan_quantization(model, exclude_ops, exclude_nodes)
    plan.cache_only = list(prepared.plan.cache_only)
    plan.ort = prepared.plan.ort  # equalization changes weights, not the graph
    return PreparedModel(prepared.path, model, prepared.inputs, plan, prepared.folded,
                         {t: np.asarray(s, np.float64) for t, s in scales.items()}, prepared.prequantized,
                         prepared.cross_layer, prepared.rewrites)
