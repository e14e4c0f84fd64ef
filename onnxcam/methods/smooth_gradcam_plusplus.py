"""Smooth Grad-CAM++ (Omeiza et al. 2019, arXiv:1908.01224) as torchcam 0.5 computes it — docs/METHODS.md,
"Gradient-weighted maps"; torchcam's ``SmoothGradCAMpp``."""

from __future__ import annotations

import numpy as np

from .base import channel_weighted_map, register
from .options import MethodOption, declare_options
from .request import MethodRequest, ModelMethod

SAMPLES = MethodOption("n", "int", 4, "noisy samples")
NOISE_STD = MethodOption("noise_std", "number", 0.3, "noise std in the preprocessed input's units", low=0.0)
RANDOM_SEED = MethodOption("random_seed", "seed", 0, "seed of the noise")
NOISE = MethodOption("noise", "tensor", None, "explicit noise [N, n, C, H, W] (Python only)")
_EPS = np.float32(1e-8)


def input_noise(request: MethodRequest) -> np.ndarray:
    """The noise ``[N, n, C, H, W]`` (float32): the ``noise`` option, or ``noise_std · 𝒩(0, 1)`` drawn from
    ``numpy.random.default_rng(random_seed)`` afresh for every image (every image sees the same noise)."""
    given = NOISE.read(request)
    n = SAMPLES.read(request)
    shape = (len(request.x), n, *request.x.shape[1:])
    if given is not None:
        if given.shape != shape:
            raise ValueError(f"option 'noise' must be [N, n, C, H, W] = {list(shape)}, got shape {list(given.shape)}")
        return given
    std = NOISE_STD.read(request)
    one = np.random.default_rng(RANDOM_SEED.read(request)).standard_normal(shape[1:]).astype(np.float32)
    return np.broadcast_to(np.float32(std) * one, shape)


def smooth_gradcam_plusplus_weights(
    activations: np.ndarray, gradients: np.ndarray, noisy_gradients: np.ndarray
) -> np.ndarray:
    """Channel weights ``[N, K]``: ``w_k = Σ_ij α_kij · max(G_kij, 0)`` with

    ``α = D² / (2·D² + Σ_ab D³_kab·A_kab + 1e-8)``, ``Dᵖ = (1/n) Σ_m G_mᵖ`` over the noisy inputs' gradients
    ``noisy_gradients`` ``[N, n, K, h, w]``; ``A``, ``G`` ``[N, K, h, w]`` of the clean input (torchcam's formula,
    whose sum ``Σ_ab D³·A`` is per channel, not ``(Σ_ab A)·D³`` as pytorch-grad-cam's Grad-CAM++).
    """
    d2 = (noisy_gradients**2).mean(axis=1)
    d3 = (noisy_gradients**3).mean(axis=1)
    alpha = d2 / (2 * d2 + (d3 * activations).sum(axis=(2, 3), keepdims=True) + _EPS)
    return (alpha * np.maximum(gradients, 0)).sum(axis=(2, 3))


def smooth_gradcam_plusplus(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw Smooth Grad-CAM++ map ``[N, h, w]``: ``Σ_k w_k A_k`` (:func:`smooth_gradcam_plusplus_weights`), the
    derivatives averaged over ``x + δ_m`` (:func:`input_noise`). Options: ``n`` (default 4), ``noise_std`` (0.3),
    ``random_seed`` (0), ``noise``. Cost: ``n`` forward + backward passes per image (per layer)."""
    noise = input_noise(request)
    n_images, n = noise.shape[:2]
    noisy = (request.x[:, None] + noise).reshape(n_images * n, *request.x.shape[1:])
    _, grads = request.model.layer_outputs(noisy, np.repeat(request.seed, n, axis=0))
    acts = request.activations[layer]
    noisy_grads = grads[layer].reshape(n_images, n, *acts.shape[1:])
    weights = smooth_gradcam_plusplus_weights(acts, request.gradients[layer], noisy_grads)
    return channel_weighted_map(acts, weights, False)


SMOOTH_GRADCAM_PLUSPLUS = register(
    ModelMethod(
        "smoothgradcam++",
        smooth_gradcam_plusplus,
        "Grad-CAM++ with derivatives averaged over noisy inputs",
        resolution="layer",
    )
)
declare_options("smoothgradcam++", SAMPLES, NOISE_STD, RANDOM_SEED, NOISE)
