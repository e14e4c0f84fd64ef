"""Ablation-CAM (Desai & Ramaswamy, WACV 2020) — docs/METHODS.md, "Perturbation maps";
pytorch-grad-cam's ``AblationCAM``."""

from __future__ import annotations

import numpy as np

from .base import channel_weighted_map, first_component_projection, register
from .options import BATCH_SIZE, MethodOption, declare_options
from .perturbation import perturbed_objective
from .request import MethodRequest, ModelMethod

ABLATION_OFFSET = 1e7
FRACTION = MethodOption("ablation_fraction", "number", 1.0, "fraction of channels ablated", low=1e-9, high=1.0)


def ablation_value(activations: np.ndarray) -> np.float32:
    """What an ablated channel of one image's map ``[K, h, w]`` is set to: ``0`` if ``min(A) = 0``, else
    ``min(A) − 1e7`` (the reference's convention for maps with negative values)."""
    low = activations.min()
    return np.float32(0.0 if low == 0 else low - ABLATION_OFFSET)


def channels_to_ablate(activations: np.ndarray, fraction: float) -> np.ndarray:
    """Channels of one image's map ``[K, h, w]`` to ablate, sorted: all of them when ``fraction = 1``.

    Otherwise pytorch-grad-cam's experimental selection (``AblationLayer.activations_to_be_ablated``): a binary
    mask ``|P| > 0.01`` of the min-max-normalised first-principal-component projection ``P`` (Eigen-CAM), each
    channel scored by ``Σ mask·â_k / Σ â_k`` (``â_k = |A_k|`` min-max normalised), and the ``⌊K·fraction⌋`` highest-
    and lowest-scoring channels kept (their union).
    """
    k = activations.shape[0]
    if fraction >= 1.0:
        return np.arange(k)
    projection = np.abs(first_component_projection(activations[None])[0])
    projection = projection - projection.min()
    mask = projection / projection.max() > 0.01
    magnitude = np.abs(activations)
    magnitude = magnitude - magnitude.min(axis=(1, 2), keepdims=True)
    magnitude = magnitude / magnitude.max(axis=(1, 2), keepdims=True)
    scores = (mask * magnitude).sum(axis=(1, 2)) / magnitude.sum(axis=(1, 2))
    order = np.argsort(scores)
    keep = int(k * fraction)
    return np.union1d(order[::-1][:keep], order[:keep])


def ablation_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw Ablation-CAM map ``[N, h, w]``: ``M = Σ_k α_k A_k``, ``α_k = (y − y_k)/y``.

    ``y_k`` is the explained logit recomputed by the part of the network after ``layer`` (``head_scores``) with
    channel ``k`` set to :func:`ablation_value`; channels not ablated get ``α_k = 0``; ``y = 0`` gives ``α = 0``.
    Options: ``ablation_fraction`` (in (0, 1], default 1: every channel; else :func:`channels_to_ablate`),
    ``batch_size`` (ablated maps per head run, default 64). Cost: one forward pass up to ``layer`` (the explainer
    graph's) and one head pass per ablated channel per image.
    """
    acts = request.activations[layer]
    fraction = FRACTION.read(request)
    batch_size = BATCH_SIZE.read(request)
    y = request.target_scores
    weights = np.zeros(acts.shape[:2], np.float64)

    def heads(maps: np.ndarray) -> np.ndarray:
        return request.model.head_scores(layer, maps)

    for n, image in enumerate(acts):
        channels = channels_to_ablate(image, fraction)

        def ablated(start: int, stop: int, image: np.ndarray = image, channels: np.ndarray = channels) -> np.ndarray:
            maps = np.repeat(image[None], stop - start, axis=0)
            maps[np.arange(stop - start), channels[start:stop]] = ablation_value(image)
            return maps

        y_k = perturbed_objective(
            heads, ablated, len(channels), request.seed[n : n + 1], batch_size, desc="Ablation-CAM channels"
        )
        if y[n] != 0:
            weights[n, channels] = (y[n] - y_k) / y[n]
    return channel_weighted_map(acts, weights.astype(np.float32), False)


ABLATION_CAM = register(
    ModelMethod(
        "ablationcam",
        ablation_cam,
        "relative score drop when a channel is ablated",
        resolution="layer",
        needs_head=True,
    )
)
declare_options("ablationcam", FRACTION, BATCH_SIZE)
