"""Grad-CAM (Selvaraju et al., ICCV 2017) — docs/METHODS.md, "Gradient-weighted maps"."""

from __future__ import annotations

import numpy as np

from .base import CamMethod, channel_weighted_map, register


def grad_cam(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``α_k = (1/Z) Σ_ij G_kij``; raw ``M = Σ_k α_k A_k`` (the ReLU is post-processing step 1)."""
    return channel_weighted_map(activations, gradients.mean(axis=(2, 3)), eigen_smooth)


GRAD_CAM = register(CamMethod("gradcam", grad_cam, needs_gradients=True, summary="spatially averaged gradients"))
