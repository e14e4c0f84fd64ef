"""Deletion and insertion (Petsiuk et al., RISE, BMVC 2018; docs/METHODS.md, Faithfulness metrics).

Pixels are taken in order of decreasing saliency (ties in raster order). After step ``i`` of ``s`` (option
``curve_steps``, default 50), the first ``k_i = ⌈i·H·W/s⌉`` pixels are

- *deletion*: replaced in ``x`` by the ``deletion_baseline`` (default ``zero``: 0 in the normalised input, i.e. the
  normalisation's mean colour, as RISE);
- *insertion*: copied from ``x`` into the ``insertion_baseline`` (default ``blur``: ``x`` blurred by an 11×11
  Gaussian of σ = 5, as RISE, with OpenCV's reflected border).

The metric is the area under the curve of the target probability (:func:`~onnxcam.metrics.base.probability`, e.g.
``σ(logit)`` for a sigmoid head) over
the fraction ``i/s ∈ [0, 1]`` removed or revealed, by the trapezoid rule: ``AUC = (Σ_i p_i − (p_0 + p_s)/2) / s``.
Deletion: lower is better; insertion: higher is better. Each image costs ``s + 1`` forward passes per metric.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import Metric, MetricOption, MetricRequest, declare_option, register

BLUR_SIZE = 11
BLUR_SIGMA = 5.0
BASELINES = ("zero", "blur")
STEPS = declare_option(
    MetricOption("curve_steps", 50, "deletion/insertion steps (steps + 1 forward passes each)", low=1)
)
BASELINE = {
    "deletion": declare_option(MetricOption("deletion_baseline", "zero", "what deleted pixels become", BASELINES)),
    "insertion": declare_option(MetricOption("insertion_baseline", "blur", "what insertion starts from", BASELINES)),
}


def baseline(x: np.ndarray, kind: str) -> np.ndarray:
    """The substrate of one normalised input ``x`` ``[C, H, W]``: ``zero`` (zeros) or ``blur`` (Gaussian blur)."""
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(c, (BLUR_SIZE, BLUR_SIZE), BLUR_SIGMA) for c in x])
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def saliency_rank(cam: np.ndarray) -> np.ndarray:
    """Each pixel's position ``[H, W]`` in the order of decreasing saliency (stable: ties in raster order)."""
    order = np.argsort(-cam.ravel(), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank.reshape(cam.shape)


def curve_inputs(start: np.ndarray, finish: np.ndarray, rank: np.ndarray, steps: int) -> np.ndarray:
    """``[steps + 1, C, H, W]``: ``start`` with its first ``⌈i·H·W/steps⌉`` pixels (by ``rank``) from ``finish``."""
    counts = -(-np.arange(steps + 1) * rank.size // steps)
    taken = rank[None] < counts[:, None, None]
    return np.where(taken[:, None], finish[None], start[None])


def trapezoid_auc(values: np.ndarray) -> float:
    """Area under ``values`` sampled at equal steps over ``[0, 1]`` (trapezoid rule)."""
    return float((values.sum() - (values[0] + values[-1]) / 2) / (len(values) - 1))


def curve_family(request: MetricRequest, names: frozenset[str]) -> dict[str, np.ndarray]:
    """Deletion and/or insertion AUC per image (``names`` ⊆ {deletion, insertion})."""
    steps = request.option(STEPS)
    out = {name: np.zeros(len(request.x)) for name in names}
    for n, (x, cam) in enumerate(zip(request.x, request.maps, strict=True)):
        rank = saliency_rank(cam)
        for name in names:
            substrate = baseline(x, request.option(BASELINE[name]))
            start, finish = (x, substrate) if name == "deletion" else (substrate, x)
            scores = request.model.scores(curve_inputs(start, finish, rank, steps))
            out[name][n] = trapezoid_auc(request.probability(scores, request.seed[n : n + 1]))
    return out


register(Metric("deletion", curve_family, higher_is_better=False, probabilities=True))
register(Metric("insertion", curve_family, higher_is_better=True, probabilities=True))
