"""Calibration exposure in ONNX Runtime's own NCHWc layout: the statistics must be bitwise those
of the ordinary (NCHW) exposure, and tensors that do not fit must fall back to it."""

import numpy as np
import pytest
from conftest import need_shared
from onnx import TensorProto, helper, numpy_helper, shape_inference

from trtq.runtime import ort_native
from trtq.calib.collect import collect, tensor_elements
from trtq.calib.stats import TensorStats
from trtq.data.sources import Batch
from trtq.model.load import input_specs
from trtq.model.plan import plan_quantization


def _block() -> int:
    block = ort_native.block_size()
    if not block:
        pytest.skip("ONNX Runtime runs no NCHWc convolutions on this CPU: every tensor takes the ordinary path")
    return block


def conv_net():
    """input [N,8,10,10] → Conv 16 → Relu → Conv 16 → Add (residual) → Conv 12 (not a multiple
    of the block) → Relu → Conv 16 → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(3)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name)

    inits = [init("w1", 16, 8, 3, 3), init("b1", 16), init("w2", 16, 16, 1, 1), init("b2", 16),
             init("w3", 12, 16, 3, 3), init("b3", 12), init("w4", 16, 12, 1, 1), init("b4", 16),
             init("fc.w", 5, 16), init("fc.b", 5)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="add"),
        helper.make_node("Conv", ["sum", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], name="conv4"),
        helper.make_node("GlobalAveragePool", ["c4"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["N", 8, 10, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    return shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _collect(model, exposure, tensors, axes, data, batch, stride=1):
    stats = {t: TensorStats(axes.get(t)) for t in tensors}
    batches = [Batch({"input": data[i:i + batch]}, None, [""] * len(data[i:i + batch]))
               for i in range(0, len(data), batch)]
    return collect(ort_native.ExposedRunner(exposure), tensors, batches, stats=stats, stride=stride,
                   sizes=tensor_elements(model, tensors), blocks=exposure.blocks)


def _assert_same(a: dict, b: dict) -> None:
    for t in a:
        assert a[t] == b[t], t
        assert (a[t].channel_sum is None) == (b[t].channel_sum is None), t
        if a[t].channel_sum is not None:
            assert np.array_equal(a[t].channel_sum, b[t].channel_sum), t


def test_block_size_is_read_from_a_checked_probe():
    assert ort_native.block_size() in (0, 4, 8, 16, 32, 64)


@pytest.mark.parametrize("stride", [1, 3])
def test_native_exposure_gives_the_ordinary_statistics_bitwise(stride):
    block = _block()
    model = conv_net()
    plan = plan_quantization(model)
    tensors, axes = plan.activations, plan.channel_axes()
    assert {"r1", "c2", "sum", "r3"} <= set(tensors)
    native = ort_native.expose(model, tensors, axes)
    assert native.optimized and {"r1", "c2", "sum"} <= set(native.blocks)
    assert set(native.blocks.values()) == {block}
    assert "r3" not in native.blocks  # 12 channels: not a multiple of the block, kept in NCHW
    data = np.random.default_rng(0).normal(0, 1, (7, 8, 10, 10)).astype(np.float32)
    # batches of 3 against batches of 2: batch size does not matter either
    _assert_same(_collect(model, native, tensors, axes, data, 3, stride),
                 _collect(model, ort_native.expose_plain(model, tensors), tensors, axes, data, 2, stride))


def test_native_off_or_a_channel_axis_other_than_1_keeps_the_ordinary_layout():
    _block()
    model = conv_net()
    plan = plan_quantization(model)
    assert ort_native.expose(model, plan.activations, plan.channel_axes(), native=False).blocks == {}
    axes = {t: 2 for t in plan.activations}
    assert ort_native.expose(model, plan.activations, axes).blocks == {}


def test_a_tensor_other_nodes_read_in_nchw_keeps_its_reorder():
    _block()
    model = conv_net()
    # 'gap' is reordered to NCHW for Flatten: exposing it must not take that reorder away
    exposure = ort_native.expose(model, ["gap", "r1"], {})
    assert "gap" not in exposure.blocks and "r1" in exposure.blocks
    data = np.random.default_rng(1).normal(0, 1, (2, 8, 10, 10)).astype(np.float32)
    gap, _ = ort_native.ExposedRunner(exposure)({"input": data}, ["gap", "r1"])
    ref, = ort_native.ExposedRunner(ort_native.expose_plain(model, ["gap"]))({"input": data}, ["gap"])
    assert np.array_equal(gap, ref)


def test_efficientnet_statistics_are_the_same_in_either_layout():
    block = _block()
    from trtq.data.sources import batches, open_source
    from trtq.job import DataSpec
    from trtq.model.load import load_model
    from trtq.model.plan import name_nodes

    images = need_shared("data", "imagenet-sample-500")
    model = load_model(need_shared("models", "efficientnet_lite0.onnx"))
    name_nodes(model)
    plan = plan_quantization(model)
    spec = DataSpec.model_validate({"path": str(images), "batch_size": 4, "max_samples": 8, "preprocess": {
        "resize": 256, "interpolation": "bicubic", "crop": 224, "mean": 127, "std": 128}})
    inputs = input_specs(model)
    data = list(batches(open_source(spec, inputs, "calibration"), inputs, 4, "calibration", 0, 8))
    tensors, axes = plan.activations, plan.channel_axes()
    results = []
    for exposure in (ort_native.expose(model, tensors, axes), ort_native.expose_plain(model, tensors)):
        stats = {t: TensorStats(axes.get(t)) for t in tensors}
        collect(ort_native.ExposedRunner(exposure), tensors, data, stats=stats, blocks=exposure.blocks)
        results.append(stats)
    assert len(ort_native.expose(model, tensors, axes).blocks) >= 50 and block
    _assert_same(*results)
