"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780) — docs/METHODS.md, "Input-gradient maps";
pytorch-grad-cam's ``FullGrad``. Needs a graph exported with ``--bias-gradients``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..postprocess import scale
from .base import register
from .request import MethodRequest, ModelMethod


def fullgrad_map(terms: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``S = Σ_c ψ(|x ⊙ ∂y/∂x|_c) + Σ_l Σ_k ψ(|b_lk · ∂y/∂z_lk|)`` ``[N, H, W]``, ``ψ`` = min-max normalise each
    ``[h, w]`` map, then resize it bilinearly to ``size = (W, H)`` (pytorch-grad-cam's
    ``scale_accross_batch_and_channels``). ``terms``: :meth:`~onnxcam.methods.request.ModelAccess.bias_gradients`."""
    return sum(scale(np.abs(term), size).sum(axis=1) for term in terms)


def fullgrad(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """FullGrad saliency ``[N, 1, H, W]`` (:func:`fullgrad_map`); it uses every biased layer, not the chosen ones.
    Cost: one forward + backward pass per image."""
    terms = request.model.bias_gradients(request.x, request.seed)
    return fullgrad_map(terms, (request.x.shape[3], request.x.shape[2]))[:, None]


def lacks_bias_gradients(explainer: Any, layers: Sequence[str]) -> str | None:
    """Why ``explainer``'s graph cannot serve FullGrad (exported without ``--bias-gradients``), or ``None``."""
    if explainer.metadata.bias_gradients:
        return None
    return "fullgrad needs the bias gradients, which this graph lacks; re-export it with --bias-gradients"


FULLGRAD = register(
    ModelMethod(
        "fullgrad",
        fullgrad,
        "input × gradient + |bias × gradient| of every layer",
        "input",
        reduce=lambda a: a[:, 0],
        refusal=lacks_bias_gradients,
    )
)
