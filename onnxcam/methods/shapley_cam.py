"""ShapleyCAM (Cai, ICLR 2025, arXiv:2501.06261) — docs/METHODS.md, "Gradient-weighted maps"; pytorch-grad-cam's
``ShapleyCAM``. Needs a graph exported with ``--hvp`` (the Hessian-vector product ``H·A``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import channel_weighted_map, register
from .request import MethodRequest, ModelMethod


def shapley_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw ShapleyCAM map ``[N, h, w]``: ``M = Σ_k α_k A_k``, ``α_k = (1/Z) Σ_ij (G − ½·H·A)_kij``.

    ``G = ∂y/∂A`` and ``H·A`` the Hessian of ``y`` in ``A`` times ``A`` (a second-order Taylor estimate of each
    channel's Shapley value). Cost: one extra forward + backward + second-order pass per image (``hvp`` output).
    """
    hvp = request.model.hvp(request.x, request.seed)
    if layer not in hvp:
        raise ValueError(f"this graph has no Hessian-vector product for layer '{layer}': re-export it with --hvp")
    weights = (request.gradients[layer] - np.float32(0.5) * hvp[layer]).mean(axis=(2, 3))
    return channel_weighted_map(request.activations[layer], weights, False)


def lacks_hvp(explainer: Any, layers: Sequence[str]) -> str | None:
    """Why ``explainer``'s graph cannot serve ShapleyCAM on ``layers`` (no ``hvp:<layer>``), or ``None``."""
    missing = [layer for layer in layers if layer not in explainer.metadata.hvp]
    if not missing:
        return None
    return f"shapleycam: this graph has no Hessian-vector product for '{missing[0]}'; re-export it with --hvp"


SHAPLEY_CAM = register(
    ModelMethod(
        "shapleycam",
        shapley_cam,
        "gradient minus half the Hessian-vector product",
        resolution="layer",
        refusal=lacks_hvp,
    )
)
