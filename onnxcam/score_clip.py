"""int8 scores clipped at their quantization range (metadata ``onnxcam.score_limits``): found from an image's scores
and gradients, and told in one line naming the maps it leaves blank.

The deployed model computes ``DQ(Q(z))`` for its scores ``z``: outside the range ``[lo, hi]`` the score stays at the
limit, so its straight-through-estimator gradient is 0 (``z̄ = ḡ·[q_min ≤ round(z/s) + zp ≤ q_max]``, Jacob et
al. 2018) and the gradient methods' maps are blank; perturbations that leave the score beyond the limit do not
change it either. Other methods (Score-CAM, Eigen-CAM, …) may still give a map: only blank maps are named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreClip:
    """An explained score held at an end of the int8 scores' range ``limits``: ``value`` (the limit), ``end``
    (``"top"``/``"bottom"``), ``negated``: the explanation weighs it negatively (a binary head's negative class
    explains ``−logit``)."""

    value: float
    end: str
    limits: tuple[float, float]
    negated: bool = False


def find_clip(
    scores: np.ndarray, seed: np.ndarray, gradients: Sequence[np.ndarray], limits: tuple[float, float] | None
) -> ScoreClip | None:
    """The clip of one image's explained score, else ``None``.

    ``scores``, ``seed``: ``[*S]``; ``gradients``: the image's ``gradient:<layer>`` arrays; ``limits``: the scores'
    quantization range. A clip is when every gradient is exactly 0 and a seeded score sits at either limit (a score
    at the limit that still has a gradient rounds to ``q_max`` from inside the range: not clipped).
    """
    if limits is None or not gradients or any(g.size == 0 or np.any(g) for g in gradients):
        return None
    lo, hi = limits
    slack = 1e-6 * max(abs(lo), abs(hi))
    for value, end, held in [(hi, "top", scores >= hi - slack), (lo, "bottom", scores <= lo + slack)]:
        hit = (seed != 0) & held
        if hit.any():
            return ScoreClip(value, end, (lo, hi), negated=bool((seed[hit] < 0).all()))
    return None


def clip_warning(clip: ScoreClip | None, maps: Mapping[str, np.ndarray]) -> str | None:
    """One line for ``clip`` naming the methods whose final map (``maps``, by method) is 0 everywhere; ``None``
    without a clip or without a blank map."""
    blank = [method for method, values in maps.items() if values.size and float(values.max()) == 0.0]
    if clip is None or not blank:
        return None
    lo, hi = clip.limits
    subject = "the score whose negative is explained" if clip.negated else "the explained score"
    return (
        f"{subject} ({clip.value:.6g}) is clipped at the {clip.end} of the int8 scores' quantization range "
        f"[{lo:.6g}, {hi:.6g}]: its gradient is 0 and small changes of the image leave it there, so these maps are "
        f"blank: {', '.join(blank)}; calibrate the int8 model on images that score beyond this one, or explain the "
        "float model"
    )
