"""Which axis of each model input is the batch axis.

Real exports do not all put the batch first: a recurrent state is ``[layers, B, hidden]``, a
sample-rate input is a scalar with no batch at all. Per input, in this order:

1. the job says so (``inputs: {state: {batch_axis: 1}}``; ``batch_axis: null`` = no batch axis);
2. a rank-0 input has none: it is fed as it is;
3. a dimension name (``dim_param``) shared by several inputs is the batch (``batch`` in
   ``input: [batch, T]`` and ``state: [2, batch, 128]``);
4. a dynamic first axis is the batch;
5. a fixed first axis with exactly one dynamic axis elsewhere, in a model where another input's
   first axis is dynamic, is batched on that dynamic axis (``state: [2, ?, 128]`` beside
   ``input: [?, ?]``);
6. otherwise the first axis, whose fixed size is then the model's batch size.

A dimension is dynamic when it has no positive ``dim_value`` (symbolic, unknown, 0 or -1).
"""

from __future__ import annotations

from collections import Counter

import onnx

from ..errors import JobError

AUTO = "auto"


def dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Each dimension as its positive size, its symbol, or None when unknown/negative/zero."""
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or None)
    return out


def infer_batch_axes(inputs: list[onnx.ValueInfoProto], given: dict[str, int | None | str] | None = None,
                     ) -> dict[str, int | None]:
    """Input name → its batch axis (None: no batch axis). ``given``: the job's ``inputs.<name>.batch_axis``."""
    given = dict(given or {})
    names = [vi.name for vi in inputs]
    for name in given:
        if name not in names:
            raise JobError(f"inputs.{name}: the model has no input '{name}'; its inputs: {', '.join(names)}")
    shapes = {vi.name: dims(vi) for vi in inputs}
    symbols = Counter(s for shape in shapes.values() for s in set(shape) if isinstance(s, str))
    shared = {s for s, n in symbols.items() if n > 1}
    any_dynamic_first = {n for n, shape in shapes.items() if shape and not isinstance(shape[0], int)}
    axes: dict[str, int | None] = {}
    for name, shape in shapes.items():
        want = given.get(name, AUTO)
        if want != AUTO:
            if want is not None and not -len(shape) <= want < len(shape):
                raise JobError(f"inputs.{name}.batch_axis: {want} is outside the input's {len(shape)} axes")
            axes[name] = None if want is None else want % len(shape)
        elif not shape:
            axes[name] = None
        elif any(s in shared for s in shape):
            axes[name] = next(i for i, s in enumerate(shape) if s in shared)
        elif not isinstance(shape[0], int):
            axes[name] = 0
        else:
            dynamic = [i for i, s in enumerate(shape) if not isinstance(s, int)]
            other_batched = any_dynamic_first - {name}
            axes[name] = dynamic[0] if len(dynamic) == 1 and other_batched else 0
    return axes
