import struct

import pytest

from trtq.calib.ranges import Range
from trtq.calib import cache
from trtq.errors import CacheError


def test_check_value_decodes_to_scale_0_0078452():
    assert cache.decode_scale("3c008912") == pytest.approx(0.0078452, abs=5e-8)
    # the scale is amax/127: this tensor's range is ±0.996
    assert cache.decode_scale("3c008912") * 127 == pytest.approx(0.99634, abs=1e-4)


def test_encoding_is_big_endian_ieee_float32():
    assert cache.encode_scale(1.0) == "3f800000"
    assert cache.encode_scale(struct.unpack("!f", bytes.fromhex("3c008912"))[0]) == "3c008912"


def test_round_trip_is_exact_and_keeps_header():
    text = "TRT-8601-EntropyCalibration2\ninput: 3c010a14\nconv1_out: 3d2b6f3c\n"
    parsed = cache.loads(text)
    assert (parsed.version, parsed.algorithm) == ("8601", "EntropyCalibration2")
    assert list(parsed.scales) == ["input", "conv1_out"]
    assert cache.dumps(parsed) == text


def test_from_ranges_writes_scale_amax_over_127_and_never_zero():
    c = cache.from_ranges({"a": Range.symmetric(127.0), "dead_relu": Range.symmetric(0.0)}, "8601", "MinMaxCalibration")
    text = cache.dumps(c)
    assert text.splitlines()[0] == "TRT-8601-MinMaxCalibration"
    back = cache.loads(text)
    assert back.scales["a"] == 1.0
    assert back.scales["dead_relu"] > 0


def test_names_with_colons_and_spaces_survive():
    c = cache.CalibrationCache("8601", "EntropyCalibration2", {"model/conv 1:0": 0.5})
    assert cache.loads(cache.dumps(c)).scales == {"model/conv 1:0": 0.5}


@pytest.mark.parametrize("text", ["", "hello\n", "TRT-8601-EntropyCalibration2\ninput 3c010a14\n",
                                  "TRT-8601-EntropyCalibration2\ninput: 3c01zz\n",
                                  "TRT-8601-EntropyCalibration2\ninput: 3c010a14f\n",
                                  "TRT-8601-EntropyCalibration2\ninput: \n"])
def test_malformed_caches_are_clear_errors(text):
    with pytest.raises(CacheError):
        cache.loads(text, "x.cache")


DATA = __import__("pathlib").Path(__file__).parent / "data"


def test_real_tensorrt_7_cache_decodes_to_hand_computed_values():
    text = (DATA / "trt7202_mnist_lenet.cache").read_text()
    c = cache.loads(text)
    assert (c.version, c.algorithm, len(c.scales)) == ("7202", "EntropyCalibration2", 9)
    # 0x3c008912: exponent 120 → 2^-7, mantissa 1 + 0x008912/2^23 → 0.0078125 × 1.0041830
    assert c.scales["data"] == pytest.approx(0.0078125 * (1 + 0x008912 / 2**23), rel=1e-7)
    # 0x3e11094c: exponent 124 → 2^-3, mantissa 1 + 0x11094c/2^23 → 0.141637
    assert c.scales["ip2"] == pytest.approx(0.125 * (1 + 0x11094C / 2**23), rel=1e-7)
    assert c.scales["conv1"] == c.scales["pool1"]  # max pooling keeps the range
    assert "(Unnamed Layer* 4) [Fully Connected]_output" in c.scales
    assert cache.dumps(c) == text


def test_real_tensorrt_8_cache_decodes_raw_pixel_input_range():
    text = (DATA / "trt8510_mnist_torch.cache").read_text()
    c = cache.loads(text)
    assert (c.version, len(c.scales)) == ("8510", 22)
    # 0x4000890a: exponent 128 → 2^1, mantissa 1 + 0x00890a/2^23 → 2.00836: amax ≈ 255 (raw pixels)
    assert c.scales["x"] == pytest.approx(2 * (1 + 0x00890A / 2**23), rel=1e-7)
    assert c.amax()["x"] == pytest.approx(255.06, abs=0.01)
    assert c.scales["/conv1/Conv_output_0"] == pytest.approx(1 + 0x1DB09C / 2**23, rel=1e-7)
    assert cache.dumps(c) == text


def test_real_tensorrt_10_lines_bare_zero_and_infinity_decode_bit_exactly():
    # TensorRT prints the bits as a plain hex number: a zero scale is a bare "0" (these two lines
    # are from caches written by TensorRT 10.9 and 10.13.3), +inf is 7f800000, and a denormal
    # loses its leading zeros.
    text = ("TRT-100900-EntropyCalibration2\n"
            "ONNXTRT_Broadcast_1855_output: 0\n"
            "/Sub_output_0: 0\n"
            "/conv/Conv_output_0: 3c010a14\n"
            "/Exp_output_0: 7f800000\n"
            "tiny: 1\n")
    c = cache.loads(text, "trt10.cache")
    assert c.version == "100900" and len(c.scales) == 5
    assert c.scales["ONNXTRT_Broadcast_1855_output"] == 0.0
    assert c.scales["/Sub_output_0"] == 0.0
    assert c.scales["/Exp_output_0"] == float("inf")
    assert c.scales["tiny"] == struct.unpack("!f", bytes.fromhex("00000001"))[0]  # smallest denormal
    for value in c.scales.values():  # written back as 8 digits, the same bits
        assert cache.decode_scale(cache.encode_scale(value)) == value
    assert cache.dumps(c).splitlines()[1] == "ONNXTRT_Broadcast_1855_output: 00000000"
