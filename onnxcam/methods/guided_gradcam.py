"""Guided Grad-CAM (Selvaraju et al., ICCV 2017) — docs/METHODS.md, "Input-gradient maps"."""

from __future__ import annotations

import numpy as np

from ..postprocess import postprocess
from .base import register
from .gradcam import grad_cam
from .input_gradients import input_gradient, max_abs_channel
from .request import MethodRequest, ModelMethod


def guided_gradcam(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """Guided backpropagation ⊙ the Grad-CAM map: ``[N, C, H, W]``.

    The Grad-CAM map is the final one (post-processed, layers fused, in [0, 1], resized bilinearly to the input) of
    the request's layers — pytorch-grad-cam's recipe ``cam_mask * GuidedBackpropReLUModel(x)``; captum's
    ``GuidedGradCam`` uses the un-normalised map of one layer, nearest-upsampled (the same up to scale for a map
    whose minimum is 0, and up to the interpolation). Cost: one forward and one backward pass per image.
    """
    layers = list(request.activations)
    size = (request.x.shape[3], request.x.shape[2])
    cam = postprocess([grad_cam(request.activations[k], request.gradients[k]) for k in layers], size)
    return input_gradient(request, "guided") * cam[:, None]


GUIDED_GRADCAM = register(
    ModelMethod(
        "guidedgradcam",
        guided_gradcam,
        "guided backpropagation ⊙ Grad-CAM",
        "input",
        rules=("guided",),
        reduce=max_abs_channel,
    )
)
