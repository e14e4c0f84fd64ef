"""Faithfulness metrics of explanation maps (docs/METHODS.md, "Faithfulness metrics"): forward passes only, pure numpy.

``evaluate_maps(model, x, seed, {method: maps}, ["deletion", "insertion"])`` scores maps per image. Registered
metrics: confidence change, drop/increase in confidence and Average Drop (:mod:`.confidence`), deletion and insertion
AUC (:mod:`.deletion`), ROAD MoRF/LeRF, their averages and the combined score (:mod:`.road`), the pointing game,
sparseness and complexity (:mod:`.localisation`, maps only), and the MPRT sanity check (:mod:`.mprt`). Importing
this package registers every metric.
"""

from __future__ import annotations

from . import confidence, deletion, localisation, mprt, road
from .base import (
    Metric,
    MetricOption,
    MetricRequest,
    available_metrics,
    check_on_graph,
    check_options,
    get_metric,
    metric_options,
    register,
    resolve_metrics,
)
from .evaluate import evaluate_maps

__all__ = [
    "Metric",
    "MetricOption",
    "MetricRequest",
    "available_metrics",
    "check_on_graph",
    "check_options",
    "confidence",
    "deletion",
    "evaluate_maps",
    "get_metric",
    "localisation",
    "metric_options",
    "mprt",
    "register",
    "resolve_metrics",
    "road",
]
