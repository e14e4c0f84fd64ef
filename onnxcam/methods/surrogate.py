"""LIME (Ribeiro et al., KDD 2016) and KernelSHAP (Lundberg & Lee, NeurIPS 2017) on superpixels — docs/METHODS.md,
"Surrogate models".

Both explain ``y`` by a weighted linear model over ``F`` superpixels (:mod:`.superpixels`): sample binary coalitions
``z ∈ {0, 1}^F`` (1 = superpixel shown, 0 = set to the baseline), run the model on each, fit
``y(z) ≈ b + Σ_f φ_f z_f`` with per-sample weights ``π(z)``, and paint ``φ_f`` on superpixel ``f``.

- LIME: ``z`` uniform (the ``lime`` package's ``LimeImageExplainer``: ``RandomState(seed).randint(0, 2)``, first row
  all ones), ``π(z) = sqrt(exp(−d(z)² / w²))`` with ``d`` the cosine distance to the all-ones row, ridge regression
  ``α = 1`` (scikit-learn ``Ridge``); ``num_features = K < F`` keeps the ``K`` superpixels of largest ``|φ|`` in a first
  ridge fit (``α = 0.01``, lime's ``highest_weights``) and refits on them, the others get 0.
- KernelSHAP: first rows all ones and all zeros (weight 10⁶, standing for the kernel's infinite end weights), then
  ``|z| = k`` drawn with probability ``∝ (F − 1) / (k (F − k))``, ``k = 1 … F − 1``, and ``k`` superpixels uniformly;
  weight 1 (the Shapley kernel is the sampling distribution), ordinary least squares (scikit-learn
  ``LinearRegression``): Captum's ``KernelShap`` recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..scores import RAW
from .base import register
from .options import BATCH_SIZE, MethodOption, declare_options
from .perturbation import SCORE_KINDS, perturbed_objective
from .request import MethodRequest, ModelMethod
from .superpixels import SEGMENTATIONS, given_segments, hidden, optional, segment

SAMPLES = MethodOption("num_samples", "int", 1000, "coalitions sampled (forward passes per image)", low=2)
FEATURES = MethodOption("num_features", "int", 0, "LIME: superpixels kept in the surrogate (0: all)", low=0)
KERNEL_WIDTH = MethodOption("kernel_width", "number", 0.25, "LIME: width of the exponential kernel", low=1e-6)
SEGMENTATION = MethodOption("segmentation", "choice", "slic", "superpixel algorithm", choices=SEGMENTATIONS)
SEGMENTS = MethodOption("n_segments", "int", 50, "slic: approximate number of superpixels")
COMPACTNESS = MethodOption("compactness", "number", 10.0, "slic: colour vs space balance", low=1e-6)
SUPERPIXELS = MethodOption(
    "superpixels", "tensor", None, "given labels [H, W] or [N, H, W] instead of segmenting (Python only)"
)
BASELINE = MethodOption("baseline", "array", 0.0, "value of a hidden superpixel, in the preprocessed input's units")
RANDOM_SEED = MethodOption("random_seed", "seed", 0, "seed of the coalitions (the same for every image)")
SCORE = MethodOption("score", "choice", "probability", "explained score (logit for raw scores)", choices=SCORE_KINDS)
#: KernelSHAP's stand-in for the infinite weight of the empty and full coalitions (Captum's ``inf_weight``).
END_WEIGHT = 1e6

#: ``(count, F, seed) -> coalitions [count, F]`` (0/1, float64).
Sampler = Callable[[int, int, int], np.ndarray]
#: ``(coalitions [S, F], y [S], request) -> (φ [F], intercept, weighted R²)``.
Fitter = Callable[[np.ndarray, np.ndarray, MethodRequest], tuple[np.ndarray, float, float]]


def lime_coalitions(count: int, features: int, seed: int) -> np.ndarray:
    """LIME's samples ``[count, F]``: ``RandomState(seed).randint(0, 2, count·F)``, first row all ones (the ``lime``
    package's ``LimeImageExplainer.data_labels``, bit for bit)."""
    z = np.random.RandomState(seed % 2**32).randint(0, 2, count * features).reshape(count, features)
    z[0] = 1
    return z.astype(np.float64)


def lime_weights(z: np.ndarray, kernel_width: float) -> np.ndarray:
    """``π(z) = sqrt(exp(−d² / w²))``, ``d = 1 − |z| / (‖z‖ √F) = 1 − sqrt(|z| / F)`` the cosine distance of each row
    of ``z`` ``[S, F]`` to the all-ones row (1 for the empty row, as scikit-learn's ``cosine`` distance)."""
    distance = 1.0 - np.sqrt(z.sum(axis=1) / z.shape[1])
    return np.sqrt(np.exp(-(distance**2) / kernel_width**2))


def lime_fit(z: np.ndarray, y: np.ndarray, kernel_width: float, num_features: int) -> tuple[np.ndarray, float, float]:
    """LIME's surrogate: ``(φ [F], intercept, weighted R²)`` of ``Ridge(α=1)`` on ``(z, y)`` with weights
    :func:`lime_weights`; ``num_features`` ``0 < K < F`` restricts it to lime's ``highest_weights`` selection."""
    linear = optional("sklearn.linear_model", "LIME")
    weights = lime_weights(z, kernel_width)
    used = np.arange(z.shape[1])
    if 0 < num_features < z.shape[1]:
        first = linear.Ridge(alpha=0.01, fit_intercept=True).fit(z, y, sample_weight=weights)
        used = np.argsort(-np.abs(first.coef_), kind="stable")[:num_features]
    model = linear.Ridge(alpha=1.0, fit_intercept=True).fit(z[:, used], y, sample_weight=weights)
    phi = np.zeros(z.shape[1])
    phi[used] = model.coef_
    return phi, float(model.intercept_), float(model.score(z[:, used], y, sample_weight=weights))


def kernel_shap_coalitions(count: int, features: int, seed: int) -> np.ndarray:
    """KernelSHAP's samples ``[count, F]``: all ones, all zeros, then ``k ~ (F − 1) / (k (F − k))`` ones placed
    uniformly (``numpy.random.default_rng(seed)``; Captum's ``kernel_shap_perturb_generator`` recipe)."""
    if features < 2:
        raise ValueError(f"KernelSHAP needs at least 2 superpixels, got {features}: raise n_segments")
    rng = np.random.default_rng(seed % 2**64)  # any integer seed, negative ones included
    k = np.arange(1, features)
    probabilities = (features - 1) / (k * (features - k))
    sizes = rng.choice(k, size=max(count - 2, 0), p=probabilities / probabilities.sum())
    ranks = rng.random((len(sizes), features)).argsort(axis=1).argsort(axis=1)
    z = np.concatenate([np.ones((1, features)), np.zeros((1, features)), ranks < sizes[:, None]])
    return z[:count].astype(np.float64)


def kernel_shap_weights(z: np.ndarray) -> np.ndarray:
    """1 per coalition, :data:`END_WEIGHT` for the empty and the full one."""
    size = z.sum(axis=1)
    return np.where((size == 0) | (size == z.shape[1]), END_WEIGHT, 1.0)


def kernel_shap_fit(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """KernelSHAP's surrogate: ``(φ [F], intercept, weighted R²)`` of ``LinearRegression`` on ``(z, y)`` with weights
    :func:`kernel_shap_weights`."""
    linear = optional("sklearn.linear_model", "KernelSHAP")
    weights = kernel_shap_weights(z)
    model = linear.LinearRegression(fit_intercept=True).fit(z, y, sample_weight=weights)
    return np.asarray(model.coef_, np.float64), float(model.intercept_), float(model.score(z, y, sample_weight=weights))


def superpixel_attributions(
    request: MethodRequest, name: str, sample: Sampler, fit: Fitter
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Attributions ``[N, 1, H, W]`` (``φ_f`` painted on superpixel ``f``) and per-image details ``intercept``,
    ``r2`` (the surrogate's weighted R²) and ``superpixels`` (``F``).

    ``y`` is the probability of ``Σ seed ⊙ scores`` (``score="probability"``, default) or the score itself
    (``"logit"``, the default for raw scores). Every image gets the same coalitions for the same seed.
    """
    count, seed, batch_size = SAMPLES.read(request), RANDOM_SEED.read(request), BATCH_SIZE.read(request)
    given = request.option("score", None)
    kind = SCORE.read(request) if given is not None or request.scores_kind != RAW else "logit"
    baseline, labels = BASELINE.read(request), SUPERPIXELS.read(request)
    algorithm, n_segments, compactness = SEGMENTATION.read(request), SEGMENTS.read(request), COMPACTNESS.read(request)
    n_images, _, height, width = request.x.shape
    attributions = np.zeros((n_images, 1, height, width))
    details: dict[str, np.ndarray] = {key: np.zeros(n_images) for key in ("intercept", "r2", "superpixels")}
    for n, image in enumerate(request.x):
        if labels is None:
            segments = segment(image, algorithm, n_segments, compactness, name)
        else:
            segments = given_segments(labels, n, (height, width))
        if segments.max() < 1:  # one superpixel: its weight is the whole map, a constant (blank) map
            raise ValueError(
                f"{name} needs at least 2 superpixels, but {algorithm if labels is None else 'superpixels='} gives "
                "this image 1 (a noise-like image?): raise n_segments, lower compactness or pass superpixels="
            )
        z = sample(count, int(segments.max()) + 1, seed)
        y = perturbed_objective(
            request.model.scores,
            lambda start, stop, n=n, image=image, segments=segments, z=z: hidden(
                image, baseline[n], segments, z[start:stop]
            ),
            count,
            request.seed[n : n + 1],
            batch_size,
            kind,
            request.scores_kind,
            desc=f"{name} samples",
        )
        phi, details["intercept"][n], details["r2"][n] = fit(z, y, request)
        details["superpixels"][n] = len(phi)
        attributions[n, 0] = phi[segments]
    return attributions, details


def lime(request: MethodRequest, layer: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """LIME attributions ``[N, 1, H, W]`` (module docstring). Options: ``num_samples`` (default 1000),
    ``num_features`` (0: all), ``kernel_width`` (0.25), ``segmentation`` (``slic`` or ``quickshift``), ``n_segments``
    (50), ``compactness`` (10), ``superpixels`` (given labels), ``baseline`` (0), ``random_seed`` (0), ``score``,
    ``batch_size`` (64). Cost: ``num_samples`` forward passes per image."""
    width, features = KERNEL_WIDTH.read(request), FEATURES.read(request)
    return superpixel_attributions(request, "LIME", lime_coalitions, lambda z, y, _: lime_fit(z, y, width, features))


def kernel_shap(request: MethodRequest, layer: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """KernelSHAP attributions ``[N, 1, H, W]`` (module docstring); the options of :func:`lime` but ``num_features``
    and ``kernel_width``. Cost: ``num_samples`` forward passes per image."""
    return superpixel_attributions(request, "KernelSHAP", kernel_shap_coalitions, lambda z, y, _: kernel_shap_fit(z, y))


def check_extra(values: dict[str, Any], input_size: tuple[int, int]) -> None:
    """scikit-learn and scikit-image are installed (before any image); ValueError naming the extra otherwise."""
    for module in ("sklearn.linear_model", "skimage.segmentation"):
        try:
            optional(module, "LIME and KernelSHAP")
        except ImportError as exc:
            raise ValueError(str(exc)) from None


COMMON = (SAMPLES, SEGMENTATION, SEGMENTS, COMPACTNESS, SUPERPIXELS, BASELINE, RANDOM_SEED, SCORE, BATCH_SIZE)
LIME = register(
    ModelMethod("lime", lime, "ridge surrogate on superpixels (LIME)", resolution="input", reduce=lambda a: a[:, 0])
)
KERNEL_SHAP = register(
    ModelMethod(
        "kernelshap",
        kernel_shap,
        "Shapley-kernel linear surrogate on superpixels",
        resolution="input",
        reduce=lambda a: a[:, 0],
    )
)
declare_options("lime", *COMMON[:1], FEATURES, KERNEL_WIDTH, *COMMON[1:], check=check_extra)
declare_options("kernelshap", *COMMON, check=check_extra)
