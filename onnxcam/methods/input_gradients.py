"""Input-gradient maps — docs/METHODS.md, "Input-gradient maps": saliency, guided backpropagation, deconvnet,
SmoothGrad and Integrated Gradients, from ``ModelAccess.input_gradient`` (``∂y/∂x`` with a ReLU backward rule).

Attributions are ``[N, C, H, W]``; the map of the gradient methods is ``max_c |a|`` (:func:`max_abs_channel`),
that of Integrated Gradients ``Σ_c |a|``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..progress import chunks
from .base import register
from .options import BATCH_SIZE, MethodOption, declare_options
from .request import MethodRequest, ModelMethod, objective

#: Quadrature of Integrated Gradients' path integral, as ``captum.attr.IntegratedGradients(method=…)``.
IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")

SAMPLES = MethodOption("n", "int", 50, "noisy samples")
SIGMA = MethodOption("sigma", "number", 0.15, "noise std as a fraction of the input's range", low=0.0)
RANDOM_SEED = MethodOption("random_seed", "seed", 0, "seed of the noise")
NOISE = MethodOption("noise", "tensor", None, "explicit noise [N, n, C, H, W] (Python only)")
STEPS = MethodOption("steps", "int", 50, "points on the path")
IG_METHOD = MethodOption("method", "choice", "riemann_right", "quadrature", choices=IG_METHODS)
BASELINE = MethodOption("baseline", "array", 0.0, "baseline x' in the preprocessed input's units")


def max_abs_channel(attributions: np.ndarray) -> np.ndarray:
    """``max_c |a_c|``: ``[N, C, H, W] → [N, H, W]`` (docs/METHODS.md, saliency)."""
    return np.abs(attributions).max(axis=1)


def input_gradient(request: MethodRequest, rule: str) -> np.ndarray:
    """``∂y/∂x`` of the batch ``[N, C, H, W]`` with the ReLU backward ``rule``."""
    return request.model.input_gradient(request.x, request.seed, rule)


def weighted_gradient(
    request: MethodRequest, n: int, points: Callable[[int, int], np.ndarray], weights: np.ndarray, batch_size: int
) -> np.ndarray:
    """``Σ_i w_i · ∂y_n/∂x (p_i)`` ``[C, H, W]`` (float64) over points ``p_i`` built ``batch_size`` at a time by
    ``points(start, stop)``, with image ``n``'s seed and the true gradient."""
    total = np.zeros(request.x.shape[1:])
    for start, stop in chunks(len(weights), batch_size, "gradient points"):
        grads = request.model.input_gradient(points(start, stop), request.seed[n : n + 1], "standard")
        total += np.tensordot(weights[start:stop], grads.astype(np.float64), axes=1)
    return total


def saliency(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """``|∂y/∂x|`` (``captum.attr.Saliency(abs=True)``). Cost: one forward and one backward pass per image."""
    return np.abs(input_gradient(request, "standard"))


def guided_backprop(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """Guided backpropagation: ReLU backward ``ḡ·[x > 0]·[ḡ > 0]``. Cost: one forward and one backward pass."""
    return input_gradient(request, "guided")


def deconvnet(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """Deconvnet: ReLU backward ``ḡ·[ḡ > 0]`` (``captum.attr.Deconvolution``). Cost: one forward, one backward."""
    return input_gradient(request, "deconvnet")


def smoothgrad_noise(request: MethodRequest) -> np.ndarray:
    """The noise ``[N, n, C, H, W]``: ``options["noise"]`` when given, else ``N(0, σ²)`` with
    ``σ = sigma · (max x − min x)`` per image, from ``numpy.random.default_rng(random_seed)``."""
    noise = NOISE.read(request)
    if noise is not None:
        if noise.ndim != 5 or noise.shape[0] != len(request.x) or noise.shape[2:] != request.x.shape[1:]:
            raise ValueError(f"option 'noise' must be [N, n, C, H, W] with N, C, H, W of {request.x.shape}")
        return noise
    samples, sigma = SAMPLES.read(request), SIGMA.read(request)
    rng = np.random.default_rng(RANDOM_SEED.read(request))
    spread = (request.x.max(axis=(1, 2, 3)) - request.x.min(axis=(1, 2, 3))) * sigma
    noise = rng.standard_normal((len(request.x), samples, *request.x.shape[1:]), dtype=np.float32)
    return noise * spread[:, None, None, None, None].astype(np.float32)


def smoothgrad(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """SmoothGrad: ``(1/n) Σ_i ∂y/∂x (x + ε_i)``, ``ε_i ~ N(0, σ²)`` (signed; ``captum.attr.NoiseTunnel`` over
    ``Saliency(abs=False)``, ``nt_type="smoothgrad"``).

    Options: ``n`` (samples, default 50), ``sigma`` (noise std as a fraction of the image's value range, default
    0.15), ``random_seed`` (default 0), ``noise`` (explicit ``[N, n, C, H, W]``, overrides the three),
    ``batch_size`` (default 64). Cost: ``n`` forward and backward passes per image.
    """
    noise = smoothgrad_noise(request)
    batch_size = BATCH_SIZE.read(request)
    weights = np.full(noise.shape[1], 1.0 / noise.shape[1])
    return np.stack(
        [
            weighted_gradient(request, n, lambda a, b, n=n: request.x[n] + noise[n, a:b], weights, batch_size)
            for n in range(len(request.x))
        ]
    )


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(α_i, w_i)`` of ``∫₀¹ f ≈ Σ_i w_i f(α_i)``, as captum's ``approximation_parameters``: Riemann sums with
    ``w_i = 1/m`` at the right/left/middle points of ``m`` cells; captum's trapezoid (``α = linspace(0, 1, m)``,
    ``w_i = 1/m`` halved at both ends, so ``Σ w = 1 − 1/m``); or Gauss–Legendre nodes and weights mapped to [0, 1]."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if steps < 2:
        raise ValueError(f"option 'steps' must be >= 2 for {method}")
    weights = np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    first = {"riemann_right": 1.0, "riemann_left": 0.0, "riemann_middle": 0.5}[method] / steps
    return first + np.arange(steps) / steps, weights


def integrated_gradients(request: MethodRequest, layer: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Integrated Gradients: ``(x − x') ⊙ Σ_i w_i ∂y/∂x (x' + α_i (x − x'))`` (``captum.attr.IntegratedGradients``
    with the same ``method``, ``n_steps`` and ``baselines``), and per image
    ``completeness_gap = Σ attributions − (y(x) − y(x'))`` (0 for an exact integral).

    Options: ``steps`` (default 50), ``method`` (one of :data:`IG_METHODS`, default ``"riemann_right"``, the
    formula of docs/METHODS.md), ``baseline`` (``x'``: a number or an array broadcastable to the input, default 0 —
    in the *preprocessed* space, so the mean colour under mean/std normalisation; pass the normalised black image for a
    black baseline), ``batch_size`` (default 64). Cost: ``steps`` forward and backward passes per image, plus one
    forward pass of the baselines.
    """
    steps, method, baseline = STEPS.read(request), IG_METHOD.read(request), BASELINE.read(request)
    batch_size = BATCH_SIZE.read(request)
    alphas, weights = quadrature(method, steps)
    alphas = alphas.astype(np.float32)[:, None, None, None]
    delta = request.x - baseline
    attributions = np.stack(
        [
            delta[n]
            * weighted_gradient(request, n, lambda a, b, n=n: baseline[n] + alphas[a:b] * delta[n], weights, batch_size)
            for n in range(len(request.x))
        ]
    )
    baseline_y = objective(request.model.scores(np.ascontiguousarray(baseline)), request.seed)
    gap = attributions.sum(axis=(1, 2, 3)) - (request.target_scores - baseline_y)
    return attributions, {"completeness_gap": gap}


SALIENCY = register(
    ModelMethod("saliency", saliency, "|gradient| of the input", "input", rules=("standard",), reduce=max_abs_channel)
)
GUIDED_BACKPROP = register(
    ModelMethod(
        "guidedbackprop", guided_backprop, "guided backpropagation", "input", rules=("guided",), reduce=max_abs_channel
    )
)
DECONVNET = register(
    ModelMethod("deconvnet", deconvnet, "deconvnet backward", "input", rules=("deconvnet",), reduce=max_abs_channel)
)
SMOOTHGRAD = register(
    ModelMethod(
        "smoothgrad",
        smoothgrad,
        "input gradient averaged over noisy copies",
        "input",
        rules=("standard",),
        reduce=max_abs_channel,
    )
)
INTEGRATED_GRADIENTS = register(
    ModelMethod(
        "integratedgradients",
        integrated_gradients,
        "path integral of the input gradient from a baseline",
        "input",
        rules=("standard",),
    )
)
declare_options("smoothgrad", SAMPLES, SIGMA, RANDOM_SEED, NOISE, BATCH_SIZE)


def check_quadrature(values: dict, input_size: tuple[int, int]) -> None:
    """The quadrature exists for that many steps (the Riemann and trapezoid rules need at least 2)."""
    quadrature(values["method"], values["steps"])


declare_options("integratedgradients", STEPS, IG_METHOD, BASELINE, BATCH_SIZE, check=check_quadrature)
