"""What the perturbation methods share: the explained value of many perturbed copies of one image.

``y = Σ seed ⊙ scores`` (docs/METHODS.md, Targets), on the logits (``"logit"``) or on the class probabilities
(``"probability"``: softmax over the class axis, axis 1 of ``[M, K, …]``), as RISE and, optionally, occlusion use.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..progress import chunks
from .request import objective

SCORE_KINDS = ("logit", "probability")


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (axis 1) in float64."""
    z = scores.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def explained(scores: np.ndarray, seed: np.ndarray, kind: str = "logit") -> np.ndarray:
    """``Σ seed ⊙ scores`` per row (``kind="logit"``) or ``Σ seed ⊙ softmax(scores)`` (``"probability"``): ``[M]``."""
    return objective(class_probabilities(scores) if kind == "probability" else scores, seed)


def perturbed_objective(
    forward: Callable[[np.ndarray], np.ndarray],
    make: Callable[[int, int], np.ndarray],
    count: int,
    seed: np.ndarray,
    batch_size: int,
    kind: str = "logit",
    desc: str = "perturbed inputs",
) -> np.ndarray:
    """``y`` of ``count`` perturbed inputs ``[count]`` (float64), built and run ``batch_size`` at a time.

    ``make(start, stop)`` builds rows ``start..stop`` of the perturbed batch; ``forward`` gives their logits
    (``ModelAccess.scores``, or ``head_scores`` of a layer); ``seed`` is the image's seed row ``[1, *S]``;
    ``desc`` names the inner progress bar (:mod:`onnxcam.progress`, on a terminal only).
    """
    parts = [explained(forward(make(start, stop)), seed, kind) for start, stop in chunks(count, batch_size, desc)]
    return np.concatenate(parts) if parts else np.zeros(0)
