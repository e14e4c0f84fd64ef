"""CAM methods by the names pytorch-grad-cam users know: ``get_method("gradcam++")(activations, gradients)``.

Pure numpy, float32. Each method returns the raw map ``[N, h, w]``; :mod:`onnxcam.postprocess` turns it into the
normalised, input-sized map. The formulas are those of /work/shared/METHODS.md. Importing this package registers
every method (one module per method or family, each calling ``register`` at import).
"""

from __future__ import annotations

from .base import (
    CamFunction,
    CamMethod,
    available_methods,
    channel_weighted_map,
    combine,
    first_component_projection,
    get_method,
    register,
)
from .class_activation import class_activation_map
from .eigen import eigen_cam, eigen_grad_cam
from .elementwise import grad_cam_elementwise, hires_cam, layer_cam
from .gradcam import grad_cam
from .gradcam_plusplus import grad_cam_plusplus
from .xgradcam import xgrad_cam

__all__ = [
    "CamFunction",
    "CamMethod",
    "available_methods",
    "channel_weighted_map",
    "class_activation_map",
    "combine",
    "eigen_cam",
    "eigen_grad_cam",
    "first_component_projection",
    "get_method",
    "grad_cam",
    "grad_cam_elementwise",
    "grad_cam_plusplus",
    "hires_cam",
    "layer_cam",
    "register",
    "xgrad_cam",
]
