"""Image preprocessing: decode → resize shorter side → center crop → scale/mean/std → layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..job import Preprocess

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def load_image(path: Path, spec: Preprocess) -> np.ndarray:
    """Return one preprocessed image as float32, CHW (or HWC), without a batch dimension."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if spec.color == "L" else "RGB")
            if spec.resize:
                w, h = im.size
                s = spec.resize / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), _RESAMPLE[spec.interpolation])
            if spec.crop:
                ch, cw = (spec.crop, spec.crop) if isinstance(spec.crop, int) else spec.crop
                w, h = im.size
                if cw > w or ch > h:
                    raise DataError(f"{path}: image is {w}x{h} after resize, smaller than crop {cw}x{ch}; raise preprocess.resize")
                left, top = round((w - cw) / 2), round((h - ch) / 2)
                im = im.crop((left, top, left + cw, top + ch))
            x = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}); remove it or convert it") from None
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.color == "BGR":
        x = x[:, :, ::-1]
    x = x * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (x - mean) / std
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)
