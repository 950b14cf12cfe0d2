"""Image preprocessing: decode → resize (shorter side, exact, letterbox or to a height) → multiple of N →
center crop → scale/mean/std → right-pad to a width → layout."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, one_line
from ..job import Preprocess

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _geometry(im: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize (shorter side, exact, letterbox or to a height), round to ``multiple_of``, crop."""
    resample = _RESAMPLE[spec.interpolation]
    w, h = im.size
    if spec.resize:
        s = spec.resize / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), resample)
    elif spec.resize_to:
        im = im.resize((spec.resize_to[1], spec.resize_to[0]), resample)
    elif spec.letterbox:
        bh, bw = spec.letterbox
        s = min(bw / w, bh / h)
        inner = im.resize((max(1, round(w * s)), max(1, round(h * s))), resample)
        fill = round(spec.fill)
        im = Image.new(inner.mode, (bw, bh), fill if inner.mode == "L" else (fill,) * 3)
        im.paste(inner, ((bw - inner.size[0]) // 2, (bh - inner.size[1]) // 2))
    elif spec.resize_height:
        width = max(1, round(w * spec.resize_height / h))
        if spec.pad_width:
            width = min(width, spec.pad_width)
        im = im.resize((width, spec.resize_height), resample)
    if spec.multiple_of:
        m = spec.multiple_of
        w, h = im.size
        im = im.resize((max(m, round(w / m) * m), max(m, round(h / m) * m)), resample)
    if spec.crop:
        ch, cw = (spec.crop, spec.crop) if isinstance(spec.crop, int) else spec.crop
        w, h = im.size
        if cw > w or ch > h:
            raise DataError(f"image is {w}x{h} after resize, smaller than crop {cw}x{ch}; raise preprocess.resize")
        left, top = round((w - cw) / 2), round((h - ch) / 2)
        im = im.crop((left, top, left + cw, top + ch))
    return im


MAX_PIXELS = 50_000_000  # a 50-megapixel photo; decoding one takes ~0.6 GB at most


def _decode(path: Path, spec: Preprocess) -> np.ndarray:
    """Decode, resize and crop one image to float32 HWC (or HW)."""
    # from memory: a damaged chunk length makes a file object's read(n) allocate n bytes up front
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        if im.size[0] * im.size[1] > MAX_PIXELS:  # before any pixel is decoded
            raise DataError(f"image declares {im.size[0]}x{im.size[1]} pixels, more than the {MAX_PIXELS // 10**6} M "
                            "trtq decodes; downscale it first")
        im = _geometry(im.convert("L" if spec.color == "L" else "RGB"), spec)
        return np.asarray(im, dtype=np.float32)


def load_image(path: Path, spec: Preprocess) -> np.ndarray:
    """Return one preprocessed image as float32, CHW (or HWC), without a batch dimension.
    Images of more than ``MAX_PIXELS`` (and past Pillow's decompression-bomb limit) are refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            x = _decode(path, spec)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many kinds on damaged or hostile files
        raise DataError(f"{path}: cannot decode image ({one_line(exc, 120)}); remove it or convert it") from None
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.color == "BGR":
        x = x[:, :, ::-1]
    x = x * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (x - mean) / std
    if spec.pad_width and x.shape[1] < spec.pad_width:
        pad = np.full((x.shape[0], spec.pad_width - x.shape[1], x.shape[2]), spec.pad_value, np.float32)
        x = np.concatenate([x, pad], axis=1)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)
