"""TensorRT calibration cache, in TensorRT's own text format.

    TRT-8601-EntropyCalibration2
    input: 3c010a14

Each value is the IEEE-754 float32 bit pattern, big-endian, of the *scale* ``amax / 127``.
TensorRT prints the pattern as a plain hex number, so leading zeros are dropped: a zero scale
is written as a bare ``0`` (seen in caches from TensorRT 10.9 and 10.13). Patterns of 1–8 hex
digits are read; trtq always writes 8.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from ..errors import CacheError
from .ranges import Range

_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{1,8})$")


@dataclass
class CalibrationCache:
    version: str = "8601"
    algorithm: str = "EntropyCalibration2"
    scales: dict[str, float] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        return {k: v * 127.0 for k, v in self.scales.items()}


def encode_scale(scale: float) -> str:
    return struct.pack("!f", scale).hex()


def decode_scale(digits: str) -> float:
    """The float32 whose bit pattern is the hex number ``digits`` (1–8 digits, e.g. ``0``)."""
    return struct.unpack("!f", bytes.fromhex(digits.rjust(8, "0")))[0]


def dumps(cache: CalibrationCache) -> str:
    lines = [f"TRT-{cache.version}-{cache.algorithm}"]
    lines += [f"{name}: {encode_scale(scale)}" for name, scale in cache.scales.items()]
    return "\n".join(lines) + "\n"


def loads(text: str | bytes, source: str = "cache") -> CalibrationCache:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
    if not lines or not (m := _HEADER.match(lines[0].strip())):
        raise CacheError(f"{source}: not a TensorRT calibration cache (first line must look like TRT-8601-EntropyCalibration2)")
    cache = CalibrationCache(m.group(1), m.group(2), {})
    for n, line in enumerate(lines[1:], start=2):
        lm = _LINE.match(line)
        if not lm:
            raise CacheError(f"{source}:{n}: expected '<tensor name>: <hex float32 bits, 1-8 digits>', "
                             f"got {line[:60]!r}")
        cache.scales[lm.group(1)] = decode_scale(lm.group(2))
    return cache


def from_ranges(ranges: dict[str, Range], version: str, algorithm: str) -> CalibrationCache:
    """Scales ``amax / 127``; a zero range gets the scale of amax 1 (see :func:`Range.scale`)."""
    return CalibrationCache(version, algorithm, {k: ranges[k].scale for k in sorted(ranges)})


def cache_text(ranges: dict[str, Range], version: str, algorithm: str) -> str:
    """The cache file's text for ``ranges``, header ``TRT-<version>-<algorithm>``."""
    return dumps(from_ranges(ranges, version, algorithm))
