"""Small classifiers for runtime tests (exported in ~1 s with the TorchScript exporter)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from onnxcam_export.api import export_model
from torch import nn


class GapNet(nn.Module):
    """Two conv blocks, global average pooling, one linear layer (the head CAM needs); 12 classes."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def export_gapnet(path: Path, layers: Sequence[str] = ("body.3",), **options: object) -> Path:
    """Export a seeded :class:`GapNet` at 32×32 to ``path``."""
    torch.manual_seed(0)
    export_model(GapNet().eval(), path, list(layers), (32, 32), exporter="torchscript", log=lambda _: None, **options)
    return path


class SegmentationOut(nn.Module):
    """A torchvision segmentation model returning its dense logits ``out["out"]`` [N, K, H, W]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class UnitNet(nn.Module):
    """Three conv blocks, global average pooling, an 8-unit embedding, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.embed = nn.Linear(16, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.embed(self.body(x).mean((2, 3)))))


class HFLogits(nn.Module):
    """A Hugging Face image classifier returning its ``.logits`` tensor (pytorch-grad-cam needs a tensor output)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values=x).logits
