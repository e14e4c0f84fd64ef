"""A pytorch-grad-cam-shaped front door: ``GradCAM(model, target_layers)(input_tensor, targets)`` → maps.

Drop-in for code written against pytorch-grad-cam, on an explainer graph instead of a PyTorch model::

    from onnxcam.compat import GradCAM, ClassifierOutputTarget, show_cam_on_image
    cam = GradCAM(model="resnet50.onnx", target_layers=["layer4"])
    grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # [N, H, W] in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .explainer import Explainer
from .visual import show_cam_on_image

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputTarget",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
    "show_cam_on_image",
]


@dataclass(frozen=True)
class ClassifierOutputTarget:
    """Explain the logit of class ``category`` (pytorch-grad-cam's target of the same name)."""

    category: int


@dataclass(frozen=True)
class BinaryClassifierOutputTarget:
    """A side of a single-logit sigmoid head: ``category`` 1 explains the logit, 0 its negative (pytorch-grad-cam's
    target of the same name; the sides are the head's classes 0 and 1, :mod:`onnxcam.scores`)."""

    category: int


class _Cam:
    method = "gradcam"

    def __init__(
        self, model: str | Path | Explainer, target_layers: Sequence[str] | None = None, provider: str = "auto"
    ) -> None:
        self.explainer = model if isinstance(model, Explainer) else Explainer(model, provider=provider)
        self.target_layers = list(target_layers) if target_layers else None

    def __call__(
        self,
        input_tensor: np.ndarray,
        targets: Sequence[ClassifierOutputTarget | BinaryClassifierOutputTarget] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Final maps ``[N, H, W]`` in [0, 1] for a preprocessed batch ``[N, C, H, W]`` (top-1 when no targets)."""
        x = np.asarray(input_tensor, np.float32)
        target = [self._class(t) for t in targets] if targets is not None else None
        results = self.explainer.explain_arrays(x, target, [self.method], self.target_layers, eigen_smooth=eigen_smooth)
        return np.stack([r.maps[self.method] for r in results])

    def _class(self, target: ClassifierOutputTarget | BinaryClassifierOutputTarget) -> int:
        """The explainer's class for a pytorch-grad-cam target. On a single-logit head the classes are its sides
        (0 = negative), so ``ClassifierOutputTarget(0)`` — the logit itself in pytorch-grad-cam — is side 1."""
        binary = self.explainer.binary
        if isinstance(target, BinaryClassifierOutputTarget) and not binary:
            raise ValueError("BinaryClassifierOutputTarget needs a single-logit sigmoid head ([N, 1] scores)")
        if isinstance(target, BinaryClassifierOutputTarget) or not binary:
            return target.category
        if target.category != 0:
            raise ValueError(f"ClassifierOutputTarget({target.category}): this head has one logit (category 0)")
        return 1


def _cam_class(name: str, method: str) -> type[_Cam]:
    return type(name, (_Cam,), {"method": method, "__doc__": f"pytorch-grad-cam's {name} on an explainer graph."})


GradCAM = _cam_class("GradCAM", "gradcam")
GradCAMPlusPlus = _cam_class("GradCAMPlusPlus", "gradcam++")
XGradCAM = _cam_class("XGradCAM", "xgradcam")
HiResCAM = _cam_class("HiResCAM", "hirescam")
GradCAMElementWise = _cam_class("GradCAMElementWise", "gradcamelementwise")
LayerCAM = _cam_class("LayerCAM", "layercam")
EigenCAM = _cam_class("EigenCAM", "eigencam")
EigenGradCAM = _cam_class("EigenGradCAM", "eigengradcam")
