"""The runtime never imports torch: a fresh interpreter explains images and writes outputs, torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from small_models import export_gapnet

SCRIPT = """
import sys
import numpy as np
import onnxcam, onnxcam.explainer, onnxcam.compat, onnxcam.batch, onnxcam.visual
from onnxcam.cli import main
from onnxcam.explainer import Explainer
e = Explainer(sys.argv[1], provider="cpu")
r = e.explain([np.full((40, 50, 3), 128, np.uint8)], methods=["gradcam", "layercam", "eigencam"])
assert r[0].maps["gradcam"].shape == (32, 32)
try:
    main(["explain", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "-q"])
except SystemExit as done:
    assert done.code == 0, done.code
print("torch" in sys.modules, "torchvision" in sys.modules)
"""


def test_explaining_imports_no_torch(tmp_path: Path) -> None:
    model = export_gapnet(tmp_path / "small.onnx")
    image = tmp_path / "img.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), str(image), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"], done.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
