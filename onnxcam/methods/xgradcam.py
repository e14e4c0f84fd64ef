"""XGrad-CAM (Fu et al., BMVC 2020) — docs/METHODS.md, "Gradient-weighted maps"."""

from __future__ import annotations

import numpy as np

from .base import CamMethod, channel_weighted_map, register, spatial_sum

_EPS = np.float32(1e-7)


def xgrad_cam(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``α_k = Σ_ij G_kij · A_kij / (Σ_ij A_kij + 1e-7)``; ``M = Σ_k α_k A_k``."""
    weights = spatial_sum(gradients * activations / (spatial_sum(activations)[:, :, None, None] + _EPS))
    return channel_weighted_map(activations, weights, eigen_smooth)


XGRAD_CAM = register(
    CamMethod("xgradcam", xgrad_cam, needs_gradients=True, summary="activation-normalised gradient weights")
)
