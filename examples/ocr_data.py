"""Rendered text for the PP-OCR models: pages for the detector, lines for the recogniser, upright
and rotated lines (with labels) for the direction classifier. Deterministic for a seed.

    python examples/ocr_data.py data/ocr --pages 16 --lines 64

writes ``data/ocr/pages/*.png``, ``data/ocr/lines/*.png`` (and ``lines.txt``, the text of each)
and ``data/ocr/direction/*.png`` with ``labels.csv`` (0 upright, 1 rotated 180°, the classifier's
two classes). Text is drawn with DejaVu Sans where the system has it, else Pillow's own font.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = ("invoice total amount date number order customer address street city price quantity tax "
         "receipt payment account balance reference station platform departure arrival gate seat "
         "chapter section page figure table model engine latency accuracy calibration").split()
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    path = Path(FONTS[bold])
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def phrase(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(1, 5))):
        parts.append(str(rng.integers(0, 10000)) if rng.random() < 0.25 else str(rng.choice(WORDS)))
    text = " ".join(parts)
    return text.capitalize() if rng.random() < 0.5 else text


def _paper(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A light, slightly uneven background."""
    base = rng.integers(200, 256)
    noise = rng.normal(0, 6, (size[1], size[0], 1))
    tint = rng.integers(-12, 12, 3)
    arr = np.clip(base + tint + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    v = int(rng.integers(0, 90))
    return (v, v + int(rng.integers(0, 20)), v + int(rng.integers(0, 30)))


def render_line(rng: np.random.Generator, text: str | None = None) -> tuple[Image.Image, str]:
    text = text or phrase(rng)
    f = font(int(rng.integers(22, 34)), bool(rng.random() < 0.3))
    left, top, right, bottom = f.getbbox(text)
    pad = int(rng.integers(3, 9))
    im = _paper(rng, (right - left + 2 * pad, bottom - top + 2 * pad))
    ImageDraw.Draw(im).text((pad - left, pad - top), text, font=f, fill=_ink(rng))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(0.6))
    return im, text


def render_page(rng: np.random.Generator, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A page with several lines of text at random places, some in columns."""
    im = _paper(rng, size)
    draw = ImageDraw.Draw(im)
    y = int(rng.integers(10, 40))
    while y < size[1] - 40:
        x = int(rng.integers(10, size[0] // 3))
        f = font(int(rng.integers(16, 30)), bool(rng.random() < 0.3))
        draw.text((x, y), phrase(rng), font=f, fill=_ink(rng))
        y += int(f.size * rng.uniform(1.4, 2.6))
    return im


def write(out: Path, pages: int, lines: int, seed: int = 0, page_size: tuple[int, int] = (640, 480)) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("pages", "lines", "direction"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(pages):
        render_page(rng, page_size).save(out / "pages" / f"page{i:03d}.png")
    texts = []
    for i in range(lines):
        im, text = render_line(rng)
        im.save(out / "lines" / f"line{i:03d}.png")
        texts.append(text)
    (out / "lines" / "lines.txt").write_text("\n".join(texts) + "\n")
    with open(out / "direction" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_index"])
        for i in range(lines):
            im, _ = render_line(rng)
            rotated = i % 2 == 1
            (im.rotate(180) if rotated else im).save(out / "direction" / f"line{i:03d}.png")
            w.writerow([f"line{i:03d}.png", int(rotated)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--lines", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write(args.out, args.pages, args.lines, args.seed)
    print(f"wrote {args.pages} pages, {args.lines} lines and {args.lines} direction samples to {args.out}")


if __name__ == "__main__":
    main()
