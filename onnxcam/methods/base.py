"""Shared machinery of the CAM methods: the ``CamMethod`` record, the registry and the eigen-smoothing projection.

Every method is a pure function ``(activations [N,K,h,w], second [N,K,h,w] | [N,K] | None, eigen_smooth) -> [N,h,w]``
over float32 numpy arrays, following docs/METHODS.md and pytorch-grad-cam 1.5.x. The map it returns is *raw*:
layer resolution, not rectified, not normalised (pytorch-grad-cam's ``get_cam_image``); ReLU, min-max normalisation,
resizing and multi-layer fusion live in :mod:`onnxcam.postprocess`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .request import ModelMethod

#: ``(activations, gradients or head weights or None, eigen_smooth) -> raw map [N, h, w]``.
CamFunction = Callable[[np.ndarray, "np.ndarray | None", bool], np.ndarray]


@dataclass(frozen=True)
class CamMethod:
    """A CAM method: its registry ``name``, what it consumes, and its pure map function ``fn``.

    ``needs_gradients``: ``fn``'s second argument is ``G = ∂y^c/∂A`` ``[N,K,h,w]``.
    ``needs_head_weights``: ``fn``'s second argument is the target class's linear weights ``w^c`` ``[N,K]`` (CAM).
    Neither: the second argument is ignored (Eigen-CAM).
    """

    name: str
    fn: CamFunction
    needs_gradients: bool
    summary: str
    needs_head_weights: bool = False

    def __call__(
        self,
        activations: np.ndarray,
        gradients: np.ndarray | None = None,
        *,
        eigen_smooth: bool = False,
        head_weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Validate the inputs, cast them to float32 and return the raw map ``[N, h, w]`` (float32)."""
        acts = _as_maps(activations, "activations")
        second = None
        if self.needs_gradients:
            second = _as_maps(gradients, "gradients", like=acts)
        elif self.needs_head_weights:
            second = _as_head_weights(head_weights, acts)
        return self.fn(acts, second, eigen_smooth)


_REGISTRY: dict[str, CamMethod | ModelMethod] = {}
Registered = TypeVar("Registered", CamMethod, ModelMethod)


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register(method: Registered) -> Registered:
    """Add ``method`` (a :class:`CamMethod` or a model-querying :class:`ModelMethod`) to the registry under its
    name (case, ``-`` and ``_`` insensitive); returns it."""
    key = _key(method.name)
    if key in _REGISTRY:
        raise ValueError(f"CAM method {method.name!r} is already registered")
    _REGISTRY[key] = method
    return method


def get_method(name: str) -> CamMethod | ModelMethod:
    """The registered method called ``name`` (``"gradcam"``, ``"Grad-CAM"`` and ``"grad_cam"`` are the same)."""
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; available: {', '.join(available_methods())}") from None


def available_methods() -> tuple[str, ...]:
    """Names of all registered methods, sorted."""
    return tuple(sorted(method.name for method in _REGISTRY.values()))


def first_component_projection(weighted: np.ndarray) -> np.ndarray:
    """Project each image onto its first principal component: ``M = (X − mean_Z X) · v₁`` reshaped to ``[h, w]``.

    ``X`` is ``weighted[n]`` as a ``[Z, K]`` matrix (``Z = h·w``), centred per channel over positions, and ``v₁``
    its first right-singular vector (docs/METHODS.md, Eigen-CAM; pytorch-grad-cam's ``get_2d_projection``, NaN → 0
    included).
    The sign is the one the SVD returns: singular vectors are defined only up to ``(u, v) → (−u, −v)``, so the map
    may come out inverted; no correction is applied, to match the reference.
    """
    n, k, h, w = weighted.shape
    x = np.where(np.isnan(weighted), np.float32(0), weighted).reshape(n, k, h * w).transpose(0, 2, 1)
    x = x - x.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return np.float32((x @ vt[:, 0, :, None]).reshape(n, h, w))


def combine(weighted: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    """``M = Σ_k weighted_k``, or its first-principal-component projection when ``eigen_smooth``."""
    return first_component_projection(weighted) if eigen_smooth else weighted.sum(axis=1)


def channel_weighted_map(activations: np.ndarray, weights: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    """``M = Σ_k α_k A_k`` for channel weights ``α`` ``[N, K]`` (pytorch-grad-cam's ``BaseCAM.get_cam_image``)."""
    return combine(weights[:, :, None, None] * activations, eigen_smooth)


def spatial_sum(x: np.ndarray) -> np.ndarray:
    """``Σ_ij x_kij`` per image and channel: ``[N, K, h, w] -> [N, K]``."""
    return x.sum(axis=(2, 3))


def _as_maps(x: np.ndarray | None, what: str, like: np.ndarray | None = None) -> np.ndarray:
    if x is None:
        raise ValueError(f"this CAM method needs {what} [N, K, h, w]")
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"{what} must be [N, K, h, w], got shape {arr.shape}")
    if like is not None and arr.shape != like.shape:
        raise ValueError(f"{what} shape {arr.shape} differs from activations shape {like.shape}")
    return arr


def _as_head_weights(w: np.ndarray | None, activations: np.ndarray) -> np.ndarray:
    if w is None:
        raise ValueError("CAM needs the target class's linear head weights [N, K]")
    arr = np.asarray(w, dtype=np.float32)
    if arr.shape != activations.shape[:2]:
        raise ValueError(f"head weights must be [N, K] = {activations.shape[:2]}, got shape {arr.shape}")
    return arr
