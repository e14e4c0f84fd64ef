"""TorchScript exporter, end to end, on two graph patterns it used to refuse (the dynamo exporter exported both).

- A layer ending in ``permute`` that the head permutes back (Segformer's stages): TorchScript's ONNX peepholes fused
  the two ``Transpose`` nodes, so the scores no longer read the tapped tensor ("does not influence 'scores'").
- A ``Slice`` of tokens after ``flatten(2)`` (BEiT's mean pooling, CoaT, Dinov2): the sliced axis has a size ONNX
  shape inference leaves symbolic ("needs a static size for sliced axis 1").

Reference: ``torch.autograd.grad`` of the class score on an independent hooked copy (:mod:`torch_reference`), at a
batch of 3 (the export traces 2); tolerance 1e-5 relative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from method_cases import relative_error
from onnxcam_export.api import export_model
from torch import nn
from torch_reference import reference


class ChannelsLastStage(nn.Module):
    """Conv, a LayerNorm over channels in NHWC, returned as NCHW by ``permute`` (Segformer's stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, 2, 1)
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class PermutedBack(nn.Module):
    """Segformer's classifier: the stage's map permuted back to NHWC, reshaped to tokens, averaged, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = ChannelsLastStage()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stage(x).permute(0, 2, 3, 1)
        return self.fc(a.reshape(a.shape[0], -1, a.shape[3]).mean(1))


class TokenPool(nn.Module):
    """Patch embedding → ``flatten(2).transpose(1, 2)`` → class token prepended → a token mixer → the mean of the
    patch tokens (``tokens[:, 1:]``, BEiT's pooler) → a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        tokens = tokens + torch.tanh(self.mix(tokens))
        return self.fc(tokens[:, 1:].mean(1))


@pytest.mark.parametrize(("cls", "layer"), [(PermutedBack, "stage"), (TokenPool, "embed")])
def test_torchscript_export_matches_autograd(tmp_path: Path, cls: type[nn.Module], layer: str) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    exported, report = export_model(
        model, tmp_path / "m.onnx", [layer], (16, 16), exporter="torchscript", log=lambda _: None
    )
    assert report is not None
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    target = np.array([0, 4, -1], dtype=np.int64)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["scores", f"gradient:{layer}"]
    scores, grad = session.run(names, {"input": x, "target": target})
    ref = reference(model, [layer], torch.from_numpy(x), target)
    assert relative_error(scores, ref["scores"]) <= 1e-5
    assert np.abs(ref[f"gradient:{layer}"]).max() > 1e-3, "the layer influences the scores"
    assert relative_error(grad, ref[f"gradient:{layer}"]) <= 1e-5
