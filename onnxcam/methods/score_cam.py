"""Score-CAM (Wang et al., CVPR-W 2020) — docs/METHODS.md, "Perturbation maps"; pytorch-grad-cam's ``ScoreCAM``."""

from __future__ import annotations

import numpy as np

from .base import channel_weighted_map, register
from .options import BATCH_SIZE, declare_options
from .perturbation import perturbed_objective
from .request import MethodRequest, ModelMethod


def linear_weights(s: np.ndarray, source: int) -> np.ndarray:
    """``[len(s), source]`` weights of 1-D linear interpolation at source positions ``s ≥ 0``: each output mixes
    ``⌊s⌋`` and ``⌊s⌋ + 1`` (clamped to the source) with weights ``1 − (s − ⌊s⌋)`` and ``s − ⌊s⌋``."""
    low = np.minimum(np.floor(s).astype(np.int64), source - 1)
    high = np.minimum(low + 1, source - 1)
    frac = s - low
    weights = np.zeros((len(s), source))
    np.add.at(weights, (np.arange(len(s)), low), 1.0 - frac)
    np.add.at(weights, (np.arange(len(s)), high), frac)
    return weights


def align_corners_matrix(size: int, source: int) -> np.ndarray:
    """``[size, source]`` weights of 1-D linear interpolation with ``align_corners=True``
    (``torch.nn.UpsamplingBilinear2d``): output ``i`` samples ``s = i·(source − 1)/(size − 1)`` (``s = 0`` when
    ``size = 1``), :func:`linear_weights`."""
    step = (source - 1) / (size - 1) if size > 1 else 0.0
    return linear_weights(np.arange(size) * step, source)


def channel_masks(activations: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks ``[K, H, W]`` of one image's channels ``[K, h, w]``: upsampled bilinearly (``align_corners=True``) to
    ``size = (H, W)``, then min-max normalised per channel, ``(u − min u)/(max u − min u + 1e-8)`` (a constant
    channel gives an all-zero mask)."""
    rows = align_corners_matrix(size[0], activations.shape[1]).astype(np.float32)
    cols = align_corners_matrix(size[1], activations.shape[2]).astype(np.float32)
    up = np.einsum("yh,khw,xw->kyx", rows, activations.astype(np.float32), cols, optimize=True)
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return (up - low) / (high - low + np.float32(1e-8))


def score_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw Score-CAM map ``[N, h, w]``: ``M = Σ_k α_k A_k`` with ``α = softmax_k(y(x ⊙ mask_k))``.

    ``mask_k`` is :func:`channel_masks` of ``A_k``, multiplied into the (normalised) input; ``y`` the explained logit.
    Options: ``batch_size`` (masked inputs per model run, default 64). Cost: ``K`` forward passes per image.
    """
    acts = request.activations[layer]
    batch_size = BATCH_SIZE.read(request)
    size = request.x.shape[2:]
    weights = np.zeros(acts.shape[:2], np.float64)
    for n, image in enumerate(request.x):

        def masked(start: int, stop: int, n: int = n, image: np.ndarray = image) -> np.ndarray:
            return image[None] * channel_masks(acts[n, start:stop], size)[:, None]

        y = perturbed_objective(
            request.model.scores, masked, acts.shape[1], request.seed[n : n + 1], batch_size, desc="Score-CAM masks"
        )
        e = np.exp(y - y.max())
        weights[n] = e / e.sum()
    return channel_weighted_map(acts, weights.astype(np.float32), False)


SCORE_CAM = register(
    ModelMethod("scorecam", score_cam, "softmax of the scores of channel-masked inputs", resolution="layer")
)
declare_options("scorecam", BATCH_SIZE)
