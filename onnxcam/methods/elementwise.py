"""Element-wise gradient maps (no spatial pooling of G) — docs/METHODS.md, "Gradient-weighted maps".

HiResCAM (Draelos & Carin 2020), Grad-CAM element-wise (pytorch-grad-cam) and LayerCAM (Jiang et al., TIP 2021).
"""

from __future__ import annotations

import numpy as np

from .base import CamMethod, combine, register


def hires_cam(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``M = Σ_k G_k ⊙ A_k`` (eigen smoothing voids HiResCAM's faithfulness guarantee)."""
    return combine(gradients * activations, eigen_smooth)


def grad_cam_elementwise(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``M = Σ_k max(G_k ⊙ A_k, 0)``."""
    return combine(np.maximum(gradients * activations, 0), eigen_smooth)


def layer_cam(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``M = Σ_k max(G_k, 0) ⊙ A_k``; good on shallow layers, fuse several layers."""
    return combine(np.maximum(gradients, 0) * activations, eigen_smooth)


HIRES_CAM = register(CamMethod("hirescam", hires_cam, needs_gradients=True, summary="gradient ⊙ activation"))
GRAD_CAM_ELEMENTWISE = register(
    CamMethod("gradcamelementwise", grad_cam_elementwise, needs_gradients=True, summary="ReLU(gradient ⊙ activation)")
)
LAYER_CAM = register(CamMethod("layercam", layer_cam, needs_gradients=True, summary="ReLU(gradient) ⊙ activation"))
