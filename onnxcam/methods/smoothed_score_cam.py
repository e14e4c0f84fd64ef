"""SS-CAM (Wang et al. 2020, arXiv:2006.14255) and IS-CAM (Naidu et al. 2020, arXiv:2010.03023) as torchcam 0.5
computes them — docs/METHODS.md, "Perturbation maps"; torchcam's ``SSCAM`` and ``ISCAM``.

Both are Score-CAM with torchcam's masks (:func:`upsampled_masks`) and the channel scores averaged over ``n``
variants of each mask: noisy masks (SS-CAM) or masks scaled along a path (IS-CAM).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import channel_weighted_map, register
from .options import BATCH_SIZE, MethodOption, declare_options
from .perturbation import perturbed_objective
from .request import MethodRequest, ModelMethod
from .score_cam import linear_weights

SS_SAMPLES = MethodOption("n", "int", 35, "noisy masks per channel")
IS_SAMPLES = MethodOption("n", "int", 10, "points on the mask path")
MASK_NOISE_STD = MethodOption("mask_noise_std", "number", 2.0, "std of the noise added to the masks", low=0.0)
RANDOM_SEED = MethodOption("random_seed", "seed", 0, "seed of the noise")
MASK_NOISE = MethodOption("noise", "tensor", None, "explicit mask noise [N, n, K, H, W] (Python only)")


def half_pixel_matrix(size: int, source: int) -> np.ndarray:
    """``[size, source]`` weights of 1-D linear interpolation with ``align_corners=False`` (torch's bilinear
    ``F.interpolate``): output ``i`` samples ``s = max((i + ½)·source/size − ½, 0)``
    (:func:`.score_cam.linear_weights`)."""
    return linear_weights(np.maximum((np.arange(size) + 0.5) * source / size - 0.5, 0.0), source)


def upsampled_masks(activations: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchcam's Score-CAM masks ``[K, H, W]`` of one image's channels ``[K, h, w]``: min-max normalised per
    channel at layer resolution, ``(a − min a)/(max(a − min a) + 1e-8)``, then upsampled bilinearly
    (``align_corners=False``) to ``size = (H, W)``."""
    a = activations.astype(np.float32)
    a = a - a.min(axis=(1, 2), keepdims=True)
    a = a / (a.max(axis=(1, 2), keepdims=True) + np.float32(1e-8))
    rows = half_pixel_matrix(size[0], a.shape[1]).astype(np.float32)
    cols = half_pixel_matrix(size[1], a.shape[2]).astype(np.float32)
    return np.einsum("yh,khw,xw->kyx", rows, a, cols, optimize=True)


def averaged_score_cam(
    request: MethodRequest, layer: str, n: int, variant: Callable[[np.ndarray, int, int], np.ndarray], desc: str
) -> np.ndarray:
    """``M = Σ_k α_k A_k``, ``α = softmax_k((1/n) Σ_m y(x ⊙ variant_m(mask_k)))``, ``y`` the explained logit.

    ``variant(masks, m, image)`` gives the ``m``-th variant of one image's masks ``[K, H, W]``. (torchcam subtracts
    the unmasked input's score inside the softmax, which changes nothing.)
    """
    acts = request.activations[layer]
    batch_size = BATCH_SIZE.read(request)
    weights = np.zeros(acts.shape[:2], np.float64)
    for i, image in enumerate(request.x):
        masks = upsampled_masks(acts[i], request.x.shape[2:])
        for m in range(n):
            varied = variant(masks, m, i)

            def masked(start: int, stop: int, varied: np.ndarray = varied, image: np.ndarray = image) -> np.ndarray:
                return varied[start:stop, None] * image[None]

            weights[i] += perturbed_objective(
                request.model.scores, masked, len(masks), request.seed[i : i + 1], batch_size, desc=desc
            )
        weights[i] /= n
        e = np.exp(weights[i] - weights[i].max())
        weights[i] = e / e.sum()
    return channel_weighted_map(acts, weights.astype(np.float32), False)


def ss_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw SS-CAM map ``[N, h, w]``: :func:`averaged_score_cam` over noisy masks ``mask_k + δ_m``,
    ``δ_m ~ 𝒩(0, mask_noise_std²)`` per pixel and channel, drawn from ``numpy.random.default_rng(random_seed)``
    afresh for every image (or the ``noise`` option ``[N, n, K, H, W]``). Options: ``n`` (default 35),
    ``mask_noise_std`` (2.0), ``random_seed``, ``noise``, ``batch_size``. Cost: ``n·K`` forward passes per image."""
    n, std, given = SS_SAMPLES.read(request), MASK_NOISE_STD.read(request), MASK_NOISE.read(request)
    shape = (len(request.x), n, request.activations[layer].shape[1], *request.x.shape[2:])
    if given is not None and given.shape != shape:
        raise ValueError(f"option 'noise' must be [N, n, K, H, W] = {list(shape)}, got shape {list(given.shape)}")
    streams: dict[int, np.random.Generator] = {}

    def noisy(masks: np.ndarray, m: int, image: int) -> np.ndarray:
        if given is not None:
            return masks + given[image, m]
        rng = streams.setdefault(image, np.random.default_rng(RANDOM_SEED.read(request)))
        return masks + np.float32(std) * rng.standard_normal(masks.shape, dtype=np.float32)

    return averaged_score_cam(request, layer, n, noisy, "SS-CAM masks")


def is_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw IS-CAM map ``[N, h, w]``: :func:`averaged_score_cam` over the scaled masks ``c_m · mask_k``,
    ``c_m = Σ_{j=1..m} j/n`` for ``m = 1..n`` (torchcam's path). Options: ``n`` (default 10), ``batch_size``.
    Cost: ``n·K`` forward passes per image."""
    n = IS_SAMPLES.read(request)
    coefficients = np.cumsum(np.arange(1, n + 1) / n)
    return averaged_score_cam(
        request, layer, n, lambda masks, m, _: np.float32(coefficients[m]) * masks, "IS-CAM masks"
    )


SS_CAM = register(ModelMethod("sscam", ss_cam, "Score-CAM with channel scores averaged over noisy masks", "layer"))
IS_CAM = register(ModelMethod("iscam", is_cam, "Score-CAM with channel scores integrated along scaled masks", "layer"))
declare_options("sscam", SS_SAMPLES, MASK_NOISE_STD, RANDOM_SEED, MASK_NOISE, BATCH_SIZE)
declare_options("iscam", IS_SAMPLES, BATCH_SIZE)
