"""The runtime never imports torch: a fresh interpreter explains images and writes outputs, torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from onnxcam_export.api import export_model
from torch import nn


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


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
    torch.manual_seed(0)
    model = tmp_path / "small.onnx"
    export_model(Small().eval(), model, ["features.3"], input_size=(32, 32), exporter="torchscript", log=lambda _: 0)
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
