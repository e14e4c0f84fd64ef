"""Eigen-CAM (Muhammad & Yeasin 2020) and Eigen-Grad-CAM (pytorch-grad-cam) — docs/METHODS.md, "Gradient-weighted maps".

Both maps *are* a first-principal-component projection, so ``eigen_smooth`` changes nothing. The projection's sign is
the one the SVD returns (no correction, as the reference): see :func:`~onnxcam.methods.base.first_component_projection`.
"""

from __future__ import annotations

import numpy as np

from .base import CamMethod, first_component_projection, register


def eigen_cam(activations: np.ndarray, gradients: np.ndarray | None = None, eigen_smooth: bool = False) -> np.ndarray:
    """``M = (A − mean_Z A) · v₁`` per image, ``v₁`` the first right-singular vector of ``A`` as ``[Z, K]``."""
    return first_component_projection(activations)


def eigen_grad_cam(activations: np.ndarray, gradients: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Eigen-CAM of ``G ⊙ A``."""
    return first_component_projection(gradients * activations)


EIGEN_CAM = register(
    CamMethod("eigencam", eigen_cam, needs_gradients=False, summary="first principal component of the activations")
)
EIGEN_GRAD_CAM = register(
    CamMethod("eigengradcam", eigen_grad_cam, needs_gradients=True, summary="first principal component of G ⊙ A")
)
