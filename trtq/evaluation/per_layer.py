"""Per-layer error: where INT8 loses accuracy.

FP32 and the Q/DQ model run on the same few samples with every quantized layer's activation
input and output exposed (the Q/DQ graph keeps the FP32 tensor names). For each layer:

* ``input_sqnr_db``  — SQNR of the layer's input before its own quantization (error from upstream);
* ``output_sqnr_db`` — SQNR of the layer's output;
* ``added_noise``    — relative noise power added by this layer, ``N_out − N_in`` with
  ``N = signal⁻¹·noise = 10^(−SQNR/10)``.

Cumulative SQNR only falls along the graph, so ranking by it blames every layer downstream
of a bad one; ranking by ``added_noise`` names the layer where the noise appeared.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import shape_inference

from ..model.load import expose_tensors
from ..model.plan import QuantPlan
from .metrics import ratio_db


def layer_tensors(model: onnx.ModelProto, plan: QuantPlan) -> list[tuple[str, str, str, str]]:
    """(node, op, input tensor, output tensor) of each quantized layer, in graph order."""
    outputs = {n.name: n.output[0] for n in model.graph.node}
    return [(q.node, q.op_type, q.activation, outputs[q.node]) for q in plan.nodes]


def _concrete_sizes(model: onnx.ModelProto, tensors: list[str], feeds: dict[str, np.ndarray]) -> dict[str, int | None]:
    """Elements of each tensor for one batch of ``feeds``: shapes inferred with the inputs' real
    shapes (a dynamic height/width makes the static estimate useless); None where inference
    cannot tell."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in feeds:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in feeds[vi.name].shape:
                shape.dim.add().dim_value = d
    try:
        m = shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - then every size is unknown and the groups fall back to one tensor each
        return dict.fromkeys(tensors)
    infos = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.output)}
    out: dict[str, int | None] = {}
    for t in tensors:
        if t in feeds:
            out[t] = int(feeds[t].size)
            continue
        vi = infos.get(t)
        dims = vi.type.tensor_type.shape.dim if vi is not None else None
        ok = dims is not None and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)
        out[t] = int(np.prod([d.dim_value for d in dims], dtype=np.int64)) if ok else None
    return out


def _groups(tensors: list[str], sizes: dict[str, int | None], budget_bytes: int) -> list[list[str]]:
    """Consecutive groups whose FP32 and Q/DQ copies (float32, both models) fit the budget; a
    tensor of unknown size goes alone."""
    groups: list[list[str]] = [[]]
    used = 0
    for t in tensors:
        need = 8 * sizes[t] if sizes[t] is not None else budget_bytes
        if groups[-1] and used + need > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += need
    return [g for g in groups if g]


def _take(feeds: dict[str, np.ndarray], inputs, n: int) -> dict[str, np.ndarray]:
    axes = {i.name: i.batch_axis for i in inputs}
    out = {}
    for k, v in feeds.items():
        axis = axes.get(k, 0)
        out[k] = v if axis is None or v.shape[axis] <= n else np.take(v, range(n), axis=axis)
    return out


def _sum_squares(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float32)
    return float(np.sum(np.square(x), dtype=np.float64))


def per_layer_errors(fp32_model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
                     make_batches: Callable[[], Iterable], max_samples: int, make_runner: Callable,
                     inputs=(), budget_bytes: int = 1 << 30) -> dict:
    """Stream up to ``max_samples`` samples through both models; per-layer SQNR and added noise.

    ``make_batches()`` yields the batches (called once per pass); ``make_runner(model, optimize)``
    returns ``run(feeds, names) -> list[array]``. The layers' tensors are exposed in groups
    whose activations for one batch, in both models, fit ``budget_bytes``: one pass each."""
    in_qdq = {t for n in qdq_model.graph.node for t in (*n.input, *n.output)} | {i.name for i in qdq_model.graph.input}
    # a pre-quantized model's own Q/DQ graph may name a tensor differently from its FP32 graph: such layers are skipped
    layers = [layer for layer in layer_tensors(fp32_model, plan) if layer[2] in in_qdq and layer[3] in in_qdq]
    tensors = list(dict.fromkeys(t for _, _, x, y in layers for t in (x, y)))
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    groups, seen = None, 0
    for group_index in itertools.count():
        batches = iter(make_batches())
        first = next(batches, None)
        if first is None:
            break
        if groups is None:
            take = min(len(first), max_samples)
            groups = _groups(tensors, _concrete_sizes(fp32_model, tensors, _take(first.feeds, inputs, take)),
                             budget_bytes)
        if group_index >= len(groups):
            break
        seen = _one_pass(fp32_model, qdq_model, groups[group_index], itertools.chain([first], batches), max_samples,
                         make_runner, inputs, signal, noise)
    rows = []
    for node, op, x, y in layers:
        n_in = noise[x] / signal[x] if signal[x] > 0 else 0.0
        n_out = noise[y] / signal[y] if signal[y] > 0 else 0.0
        rows.append({"node": node, "op": op, "input": x, "output": y,
                     "input_sqnr_db": ratio_db(signal[x], noise[x]),
                     "output_sqnr_db": ratio_db(signal[y], noise[y]),
                     "added_noise": n_out - n_in})
    worst = sorted(rows, key=lambda r: -r["added_noise"])[:10]
    return {"samples": seen, "layers": rows, "worst": [r["node"] for r in worst], "passes": len(groups or [])}


def _one_pass(fp32_model, qdq_model, group: list[str], batches: Iterable, max_samples: int, make_runner, inputs,
              signal: dict, noise: dict) -> int:
    ref = make_runner(expose_tensors(fp32_model, group), True)
    # no graph optimizations: fused kernels would drop the intermediate tensor names
    quant = make_runner(expose_tensors(qdq_model, group), False)
    seen = 0
    for batch in batches:
        if seen >= max_samples:
            break
        take = min(len(batch), max_samples - seen)
        feeds = _take(batch.feeds, inputs, take)
        names = [t for t in group if t not in feeds]
        a = dict(zip(names, ref(feeds, names)))
        b = dict(zip(names, quant(feeds, names)))
        for t in group:
            fa = feeds[t] if t in feeds else a.pop(t)
            fb = feeds[t] if t in feeds else b.pop(t)
            signal[t] += _sum_squares(fa)
            noise[t] += _sum_squares(np.subtract(fa, fb, dtype=np.float32))
        seen += take
    return seen
