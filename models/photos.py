"""Write the demo's real photos (they ship inside scikit-image) as PNG files: ``python models/photos.py DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
from skimage import data

PHOTOS = {
    "chelsea": data.chelsea,  # a cat
    "coffee": data.coffee,  # an espresso
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
}


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(load(), cv2.COLOR_RGB2BGR))
    print(f"wrote {len(PHOTOS)} photos to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-out/photos")
