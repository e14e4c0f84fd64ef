"""int8 scores clipped at their quantization range (metadata ``onnxcam.score_limits``): found from an image's scores
and gradients, and told in one line naming the maps it leaves blank.

The deployed model computes ``DQ(Q(z))`` for its scores ``z``: outside the range ``[lo, hi]`` the score stays at the
limit, so its straight-through-estimator gradient is 0 (``z̄ = ḡ·[q_min ≤ round(z/s) + zp ≤ q_max]``, Jacob et
al. 2018) and the gradient methods' maps are blank; perturbations that leave the score beyond the limit do not
change it either. Other methods (Score-CAM, Eigen-CAM, …) may still give a map: only blank maps are named. When
the explanation also weighs scores inside the range (a set of classes, a region of a dense output), the maps are not
blank but leave the clipped scores' part out: one more run, seeded with the scores at the limit only, tells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreClip:
    """An explained score held at an end of the int8 scores' range ``limits``: ``value`` (the limit), ``end``
    (``"top"``/``"bottom"``), ``negated``: the explanation weighs it negatively (a binary head's negative class
    explains ``−logit``); ``partial``: other explained scores (a set of classes, a region) are not clipped, so the
    gradient maps show their part only."""

    value: float
    end: str
    limits: tuple[float, float]
    negated: bool = False
    partial: bool = False


def _held(scores: np.ndarray, seed: np.ndarray, limits: tuple[float, float]) -> list[tuple[float, str, np.ndarray]]:
    """``(limit, end, mask)`` for the top and the bottom: the seeded scores ``[*S]`` at that limit."""
    lo, hi = limits
    slack = 1e-6 * max(abs(lo), abs(hi))
    return [(hi, "top", (seed != 0) & (scores >= hi - slack)), (lo, "bottom", (seed != 0) & (scores <= lo + slack))]


def find_clip(
    scores: np.ndarray,
    seed: np.ndarray,
    gradients: Sequence[np.ndarray],
    limits: tuple[float, float] | None,
    partial: bool = False,
) -> ScoreClip | None:
    """The clip of one image's explained score, else ``None``.

    ``scores``, ``seed``: ``[*S]``; ``gradients``: the image's ``gradient:<layer>`` arrays; ``limits``: the scores'
    quantization range. A clip is when every gradient is exactly 0 and a seeded score sits at either limit (a score
    at the limit that still has a gradient rounds to ``q_max`` from inside the range: not clipped). ``partial``:
    ``seed`` is :func:`partial_probe`'s.
    """
    if limits is None or not gradients or any(g.size == 0 or np.any(g) for g in gradients):
        return None
    for value, end, hit in _held(scores, seed, limits):
        if hit.any():
            return ScoreClip(value, end, limits, negated=bool((seed[hit] < 0).all()), partial=partial)
    return None


def partial_probe(scores: np.ndarray, seed: np.ndarray, limits: tuple[float, float] | None) -> np.ndarray | None:
    """``seed`` ``[*S]`` kept only where its scores sit at a limit, when it also weighs scores inside the range
    (whose gradient hides whether those at the limit are clipped: :func:`find_clip` of the kept seed tells); else
    ``None``."""
    if limits is None:
        return None
    held = np.logical_or.reduce([mask for _, _, mask in _held(scores, seed, limits)])
    if not held.any() or not (seed != 0)[~held].any():
        return None
    return np.where(held, seed, np.float32(0))


def clip_warning(clip: ScoreClip | None, maps: Mapping[str, np.ndarray]) -> str | None:
    """One line for ``clip`` naming the methods whose final map (``maps``, by method) is 0 everywhere (a partial
    clip: whatever the maps); ``None`` without a clip or, for a whole one, without a blank map."""
    blank = [method for method, values in maps.items() if values.size and float(values.max()) == 0.0]
    if clip is None or not (blank or clip.partial):
        return None
    lo, hi = clip.limits
    where = f"clipped at the {clip.end} of the int8 scores' quantization range [{lo:.6g}, {hi:.6g}]"
    advice = "calibrate the int8 model on images that score beyond this one, or explain the float model"
    if clip.partial:
        return (
            f"the explained scores at {clip.value:.6g} are {where}: their gradient is 0, so the gradient maps show "
            f"only the other explained scores' part; {advice}"
        )
    subject = "the score whose negative is explained" if clip.negated else "the explained score"
    return (
        f"{subject} ({clip.value:.6g}) is {where}: its gradient is 0 and small changes of the image leave it there, "
        f"so these maps are blank: {', '.join(blank)}; {advice}"
    )
