"""What the perturbation methods share: the explained value of many perturbed copies of one image.

``y = Σ seed ⊙ scores`` (docs/METHODS.md, Targets), on the scores (``"logit"``) or on the probability of the explained
quantity (``"probability"``: :func:`onnxcam.scores.target_probability` for the graph's scores kind — softmax of
logits, sigmoid of a binary or multi-label head, …), as RISE and, optionally, occlusion use.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..progress import chunks
from ..scores import LOGITS, target_probability
from .request import objective

SCORE_KINDS = ("logit", "probability")


def explained(scores: np.ndarray, seed: np.ndarray, kind: str = "logit", scores_kind: str = LOGITS) -> np.ndarray:
    """``Σ seed ⊙ scores`` per row (``kind="logit"``) or the probability of that quantity (``"probability"``,
    :func:`~onnxcam.scores.target_probability` of ``scores_kind``): ``[M]``."""
    return target_probability(scores, seed, scores_kind) if kind == "probability" else objective(scores, seed)


def perturbed_objective(
    forward: Callable[[np.ndarray], np.ndarray],
    make: Callable[[int, int], np.ndarray],
    count: int,
    seed: np.ndarray,
    batch_size: int,
    kind: str = "logit",
    scores_kind: str = LOGITS,
    desc: str = "perturbed inputs",
) -> np.ndarray:
    """``y`` of ``count`` perturbed inputs ``[count]`` (float64), built and run ``batch_size`` at a time.

    ``make(start, stop)`` builds rows ``start..stop`` of the perturbed batch; ``forward`` gives their logits
    (``ModelAccess.scores``, or ``head_scores`` of a layer); ``seed`` is the image's seed row ``[1, *S]``;
    ``desc`` names the inner progress bar (:mod:`onnxcam.progress`, on a terminal only).
    """
    parts = [
        explained(forward(make(start, stop)), seed, kind, scores_kind)
        for start, stop in chunks(count, batch_size, desc)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)
