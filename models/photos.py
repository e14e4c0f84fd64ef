"""Write the demos' real photos as PNG files: ``python models/photos.py DIR [classify|faces]``.

The default set (the classifier demo) ships inside scikit-image; ``faces`` (the face-detector demo,
``scripts/detector_demo.sh``) adds Grace Hopper's portrait from matplotlib's sample data (U.S. Navy, public domain).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

PHOTOS = {
    "chelsea": data.chelsea,  # a cat
    "coffee": data.coffee,  # an espresso
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
}


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    return cv2.cvtColor(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB)


FACES = {
    "astronaut": data.astronaut,  # Eileen Collins
    "camera": lambda: np.repeat(data.camera()[..., None], 3, axis=2),  # the cameraman, grayscale
    "grace_hopper": _grace_hopper,
}


SETS = {"classify": PHOTOS, "faces": FACES}


def main(folder: str, which: str = "classify") -> None:
    if which not in SETS:
        raise SystemExit(f"unknown photo set {which!r}; choose from {', '.join(SETS)}")
    photos = SETS[which]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, load in photos.items():
        cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(load(), cv2.COLOR_RGB2BGR))
    print(f"wrote {len(photos)} photos to {out}")


if __name__ == "__main__":
    main(*(sys.argv[1:3] or ["demo-out/photos"]))
