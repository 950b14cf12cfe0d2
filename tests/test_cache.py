import struct

import pytest

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
    c = cache.from_ranges({"a": 127.0, "dead_relu": 0.0}, "8601", "MinMaxCalibration")
    text = cache.dumps(c)
    assert text.splitlines()[0] == "TRT-8601-MinMaxCalibration"
    back = cache.loads(text)
    assert back.scales["a"] == 1.0
    assert back.scales["dead_relu"] > 0


def test_names_with_colons_and_spaces_survive():
    c = cache.CalibrationCache("8601", "EntropyCalibration2", {"model/conv 1:0": 0.5})
    assert cache.loads(cache.dumps(c)).scales == {"model/conv 1:0": 0.5}


@pytest.mark.parametrize("text", ["", "hello\n", "TRT-8601-EntropyCalibration2\ninput 3c010a14\n",
                                  "TRT-8601-EntropyCalibration2\ninput: 3c01\n"])
def test_malformed_caches_are_clear_errors(text):
    with pytest.raises(CacheError):
        cache.loads(text, "x.cache")
