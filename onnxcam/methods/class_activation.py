"""CAM, class activation mapping (Zhou et al., CVPR 2016) — docs/METHODS.md, "Gradient-weighted maps".

For a GAP→Linear head, ``G = w^c / Z`` at every position, so Grad-CAM equals CAM up to the factor ``1/Z``.
CAM needs the head's weights rather than gradients (``CamMethod.needs_head_weights``).
"""

from __future__ import annotations

import numpy as np

from .base import CamMethod, channel_weighted_map, register


def class_activation_map(activations: np.ndarray, head_weights: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """``M = Σ_k w_k^c A_k`` with ``head_weights`` ``[N, K]`` the target class's row of the linear layer per image."""
    return channel_weighted_map(activations, head_weights, eigen_smooth)


CAM = register(
    CamMethod(
        "cam",
        class_activation_map,
        needs_gradients=False,
        needs_head_weights=True,
        summary="linear head weights of the target class (GAP→Linear heads)",
    )
)
