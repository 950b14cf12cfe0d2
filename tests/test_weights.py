import numpy as np
import pytest

from trtq.quant.weights import dequantize_weights, per_channel_scales, quantize_weights
from trtq.model.plan import weight_axis

# rows with max |w| 3.0, 2.5, 1.2, 1.0 (the hand-computed example)
W = np.array([[3.0, -1.0, 0.5],
              [-2.5, 2.0, 0.0],
              [0.6, -1.2, 1.1],
              [1.0, 0.25, -0.75]], dtype=np.float32)


def test_per_channel_scales_of_a_4x3_matrix_are_row_max_over_127():
    scales = per_channel_scales(W, axis=0)
    np.testing.assert_allclose(scales, np.array([3.0, 2.5, 1.2, 1.0]) / 127, rtol=1e-7)
    assert scales.dtype == np.float32


def test_same_matrix_stored_transposed_uses_axis_1():
    np.testing.assert_array_equal(per_channel_scales(W.T, axis=1), per_channel_scales(W, axis=0))


def test_quantized_values_round_half_to_even_and_saturate():
    q = quantize_weights(W, per_channel_scales(W, 0), 0)
    assert q.dtype == np.int8
    # the channel maximum maps to ±127 exactly; 1.5/ (3/127) = 63.5 → 64 (half to even)
    assert q[0, 0] == 127 and q[1, 0] == -127 and q[2, 1] == -127 and q[3, 0] == 127
    w = np.array([[3.0, 1.5]], np.float32)
    assert list(quantize_weights(w, per_channel_scales(w, 0), 0)[0]) == [127, 64]
    # reconstruction error is at most half a step per channel
    err = np.abs(dequantize_weights(q, per_channel_scales(W, 0), 0) - W)
    assert np.all(err <= per_channel_scales(W, 0)[:, None] / 2 + 1e-7)


def test_all_zero_channel_gets_a_positive_scale():
    w = np.zeros((2, 3), np.float32)
    w[1] = [1.0, -2.0, 0.5]
    scales = per_channel_scales(w, 0)
    assert scales[0] > 0 and scales[0] == pytest.approx(1 / 127)
    assert np.all(quantize_weights(w, scales, 0)[0] == 0)


def test_seven_bit_weights_use_qmax_64():
    q = quantize_weights(W, per_channel_scales(W, 0, qmax=64), 0, qmax=64)
    assert q.max() == 64 and q.min() == -64


@pytest.mark.parametrize("op,attrs,ndim,axis", [
    ("Conv", {}, 4, 0),
    ("ConvTranspose", {}, 4, 1),
    ("Gemm", {"transB": 1}, 2, 0),
    ("Gemm", {"transB": 0}, 2, 1),
    ("Gemm", {}, 2, 1),
    ("MatMul", {}, 2, 1),
])
def test_weight_axis_follows_tensorrt_rules(op, attrs, ndim, axis):
    assert weight_axis(op, attrs, ndim) == axis


def test_conv_weight_scales_are_per_output_channel():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    expected = np.abs(w).reshape(8, -1).max(axis=1) / 127
    np.testing.assert_allclose(per_channel_scales(w, 0), expected, rtol=1e-6)


def test_per_tensor_scale_of_the_4x3_matrix_is_one_max_over_127():
    """The issue's example by hand: per row 3.0/127, 2.5/127, 1.2/127, 1.0/127; per tensor one
    3.0/127 — so the last row, max 1.0, uses only 42 of its 127 levels."""
    from trtq.quant.weights import weight_scales
    per_channel = weight_scales(W, 0, granularity="per_channel")
    np.testing.assert_allclose(per_channel, [3.0 / 127, 2.5 / 127, 1.2 / 127, 1.0 / 127], rtol=1e-7)
    per_tensor = weight_scales(W, 0, granularity="per_tensor")
    assert per_tensor.shape == () and per_tensor.dtype == np.float32
    assert per_tensor == np.float32(3.0 / 127)
    q = quantize_weights(W, per_tensor, 0)
    assert list(q[3]) == [42, 11, -32]  # 1.0·127/3 = 42.33, 0.25·127/3 = 10.58, −0.75·127/3 = −31.75
    assert list(quantize_weights(W, per_channel, 0)[3]) == [127, 32, -95]  # 31.75 → 32, 95.25 → 95
    err_t = np.abs(dequantize_weights(q, per_tensor, 0) - W).max(axis=1)
    assert np.all(err_t <= 3.0 / 127 / 2 + 1e-7)  # one step for all rows: half of 3/127
