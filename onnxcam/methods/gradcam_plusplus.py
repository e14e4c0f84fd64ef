"""Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19) — docs/METHODS.md, "Gradient-weighted maps"."""

from __future__ import annotations

import numpy as np

from .base import CamMethod, channel_weighted_map, register, spatial_sum

_EPS = np.float32(1e-6)


def grad_cam_plusplus(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``α_k = Σ_ij max(G,0)·a_kij``, ``a_kij = G² / (2G² + (Σ_ij A_k)·G³ + 1e-6)`` (0 if G = 0); ``M = Σ_k α_k A_k``.

    The reference's approximation: the higher derivatives of the paper are replaced by powers of the first gradient.
    """
    g2 = gradients * gradients
    g3 = g2 * gradients
    sum_a = spatial_sum(activations)[:, :, None, None]
    a = np.where(gradients != 0, g2 / (2 * g2 + sum_a * g3 + _EPS), np.float32(0))
    return channel_weighted_map(activations, spatial_sum(np.maximum(gradients, 0) * a), eigen_smooth)


GRAD_CAM_PLUSPLUS = register(
    CamMethod("gradcam++", grad_cam_plusplus, needs_gradients=True, summary="positive gradients, higher-order weights")
)
