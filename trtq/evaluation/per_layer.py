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

from collections.abc import Callable, Iterable

import numpy as np
import onnx

from ..model.load import expose_tensors
from ..model.plan import QuantPlan
from .metrics import ratio_db


def layer_tensors(model: onnx.ModelProto, plan: QuantPlan) -> list[tuple[str, str, str, str]]:
    """(node, op, input tensor, output tensor) of each quantized layer, in graph order."""
    outputs = {n.name: n.output[0] for n in model.graph.node}
    return [(q.node, q.op_type, q.activation, outputs[q.node]) for q in plan.nodes]


def per_layer_errors(fp32_model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
                     batches: Iterable, max_samples: int, make_runner: Callable) -> dict:
    """Stream up to ``max_samples`` samples through both models; per-layer SQNR and added noise.

    ``make_runner(model, optimize)`` returns ``run(feeds, names) -> list[array]``."""
    layers = layer_tensors(fp32_model, plan)
    tensors = list(dict.fromkeys(t for _, _, x, y in layers for t in (x, y)))
    ref = make_runner(expose_tensors(fp32_model, tensors), True)
    # no graph optimizations: fused kernels would drop the intermediate tensor names
    quant = make_runner(expose_tensors(qdq_model, tensors), False)
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    seen = 0
    for batch in batches:
        if seen >= max_samples:
            break
        take = min(len(batch), max_samples - seen)
        feeds = {k: v[:take] for k, v in batch.feeds.items()}
        names = [t for t in tensors if t not in feeds]
        a = dict(zip(names, ref(feeds, names)))
        b = dict(zip(names, quant(feeds, names)))
        for t in tensors:
            fa = np.asarray(feeds[t] if t in feeds else a[t], dtype=np.float64)
            fb = np.asarray(feeds[t] if t in feeds else b[t], dtype=np.float64)
            signal[t] += float(np.sum(fa * fa))
            noise[t] += float(np.sum((fa - fb) ** 2))
        seen += take
    rows = []
    for node, op, x, y in layers:
        n_in = noise[x] / signal[x] if signal[x] > 0 else 0.0
        n_out = noise[y] / signal[y] if signal[y] > 0 else 0.0
        rows.append({"node": node, "op": op, "input": x, "output": y,
                     "input_sqnr_db": ratio_db(signal[x], noise[x]),
                     "output_sqnr_db": ratio_db(signal[y], noise[y]),
                     "added_noise": n_out - n_in})
    worst = sorted(rows, key=lambda r: -r["added_noise"])[:10]
    return {"samples": seen, "layers": rows, "worst": [r["node"] for r in worst]}
