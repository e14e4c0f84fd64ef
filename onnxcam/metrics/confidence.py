"""Confidence after multiplying the map into the input (pytorch-grad-cam's ``CamMultImageConfidenceChange``).

One forward pass of ``x ⊙ map`` (the map in ``[0, 1]`` multiplied into every channel of the *normalised* input),
then, with ``s`` the score chosen by the ``metric_score`` option (``logit``: ``y = Σ seed ⊙ scores``, default;
``probability``) and ``p`` the target probability (docs/METHODS.md, Faithfulness metrics):

- ``confidence_change = s(x ⊙ map) − s(x)``;
- ``drop_in_confidence = max(−change, 0)`` and ``increase_in_confidence = [change > 0]`` (as the reference);
- ``average_drop = max(p(x) − p(x ⊙ map), 0) / p(x)`` (Chattopadhay et al., Grad-CAM++, on probabilities).
"""

from __future__ import annotations

import numpy as np

from .base import Metric, MetricRequest, register


def confidence_family(request: MetricRequest, names: frozenset[str]) -> dict[str, np.ndarray]:
    """The confidence metrics in ``names`` from one forward pass of ``x ⊙ map``."""
    masked_scores = request.model.scores(request.x * request.maps[:, None].astype(request.x.dtype))
    change = request.target_values(masked_scores, request.seed) - request.target_values(request.scores, request.seed)
    values = {
        "confidence_change": lambda: change,
        "drop_in_confidence": lambda: np.maximum(-change, 0.0),
        "increase_in_confidence": lambda: (change > 0).astype(np.float64),
        "average_drop": lambda: average_drop(
            request.probability(request.scores, request.seed), request.probability(masked_scores, request.seed)
        ),
    }
    return {name: values[name]() for name in names}


def average_drop(p: np.ndarray, p_masked: np.ndarray) -> np.ndarray:
    """``max(p − p_masked, 0) / p`` per image."""
    return np.maximum(p - p_masked, 0.0) / p


for _name, _higher in (
    ("confidence_change", True),
    ("drop_in_confidence", False),
    ("increase_in_confidence", True),
    ("average_drop", False),
):
    register(Metric(_name, confidence_family, _higher, probabilities=_name == "average_drop"))
