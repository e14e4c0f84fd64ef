"""Models, inputs and helpers shared by the perturbation and input-gradient method tests.

``resnet18``: torchvision's, random init (seed 0), eval, exported at 112×112 with the TorchScript exporter (a few
seconds), with input gradients and head graphs; its reference side is the same PyTorch module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from onnxcam_export.api import export_model
from skimage import data
from small_models import GapNet, export_gapnet
from torch import nn

from onnxcam.explainer import Explainer

RESNET_SIZE = (112, 112)


def photos(size: tuple[int, int]) -> np.ndarray:
    """chelsea (cat) and coffee (espresso) at ``size = (H, W)``, ImageNet-normalised, NCHW float32."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = [cv2.resize(i, size[::-1], interpolation=cv2.INTER_LINEAR) for i in (data.chelsea(), data.coffee())]
    return np.stack([((i / 255.0 - mean) / std).transpose(2, 0, 1) for i in images]).astype(np.float32)


def gapnet_case(folder: Path, **export: object) -> tuple[nn.Module, Explainer, np.ndarray]:
    """The seeded :class:`GapNet` (layer ``body.3``), its explainer graph, and two random 32×32 inputs."""
    path = export_gapnet(folder / "gapnet.onnx", **export)
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return GapNet().eval(), Explainer(path, provider="cpu", threads=2), x


def resnet18_case(
    folder: Path, layers: Sequence[str] = ("layer3", "layer4"), **export: object
) -> tuple[nn.Module, Explainer, np.ndarray]:
    """Random-init torchvision resnet18 (seed 0), its explainer graph at 112×112, and :func:`photos` at that size.

    Batch-norm statistics and affine parameters are randomised too (:func:`randomize_batch_norm`): at torchvision's
    init they are the identity, and a ReLU network without biases is positively homogeneous (``f(αx) = α f(x)``),
    which would make Integrated Gradients from a zero baseline exact for any number of steps.

    ``export``: options of ``export_model`` (``input_gradients``, ``heads``): each test module exports the outputs
    it uses (input gradients are opt-in).
    """
    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.resnet18(weights=None)).eval()
    path = folder / "resnet18.onnx"
    export_model(model, path, list(layers), RESNET_SIZE, exporter="torchscript", log=lambda _: None, **export)
    return model, Explainer(path, provider="cpu", threads=2), photos(RESNET_SIZE)


def randomize_batch_norm(model: nn.Module) -> nn.Module:
    """Give every ``BatchNorm2d`` random running statistics, scale and shift (from torch's current RNG state)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model


def explain(
    explainer: Explainer,
    x: np.ndarray,
    targets: Sequence[int],
    name: str,
    layers: Sequence[str] | None = None,
    /,
    **options: object,
) -> tuple[np.ndarray, np.ndarray | None, list]:
    """``(final maps [N, H, W], attributions [N, C, H, W] or None, explanations)`` of method ``name``."""
    results = explainer.explain_arrays(x, list(targets), [name], layers, options=options)
    maps = np.stack([r.maps[name] for r in results])
    attributions = np.stack([r.attributions[name] for r in results]) if name in results[0].attributions else None
    return maps, attributions, results


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """``max |ours − reference| / max |reference|``."""
    return float(np.abs(ours - reference).max() / np.abs(reference).max())
