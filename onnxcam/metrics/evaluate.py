"""Score explanation maps with the faithfulness metrics: one call per batch, values per image, method and metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..methods.request import ModelAccess
from .base import Family, MetricRequest, check_options, get_metric


def evaluate_maps(
    model: ModelAccess,
    x: np.ndarray,
    seed: np.ndarray,
    maps: Mapping[str, np.ndarray],
    metrics: Sequence[str],
    options: Mapping[str, Any] | None = None,
    scores_kind: str = "logits",
    layers: Sequence[str] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """``[image n][method][metric] → value`` for the maps ``[N, H, W]`` (in ``[0, 1]``) of each method.

    ``x``: preprocessed inputs ``[N, C, H, W]``; ``seed``: ``[N, *S]`` or ``[*S]``, the weights of the explained
    quantity ``y = Σ seed ⊙ scores`` (the one-hot of each image's class for class targets); ``metrics``: registered
    names (:func:`~onnxcam.metrics.base.available_metrics`); ``options``: metric parameters
    (:func:`~onnxcam.metrics.base.metric_options`), strings converted; a bad value raises ValueError.
    ``scores_kind``: what the scores are (:mod:`onnxcam.scores`; an :class:`~onnxcam.Explainer` has it as
    ``explainer.scores_kind``), which defines the probabilities of deletion, insertion and average drop.
    ``layers``: the layers the maps were made at (None: the graph's), for metrics that explain again (MPRT).
    The unperturbed inputs run once; metrics of one family share their perturbed inputs.
    """
    x = np.asarray(x, np.float32)
    options = check_options(options)
    scores = model.scores(x)
    seed = np.broadcast_to(np.asarray(seed, np.float32), scores.shape)
    families: dict[Family, set[str]] = {}
    for metric in map(get_metric, metrics):
        families.setdefault(metric.family, set()).add(metric.name)
    names = [get_metric(m).name for m in metrics]
    results: list[dict[str, dict[str, float]]] = [{} for _ in range(len(x))]
    for method, method_maps in maps.items():
        cams = np.asarray(method_maps, np.float32)
        if cams.shape != (len(x), *x.shape[2:]):
            raise ValueError(f"maps of {method!r} must be [N, H, W] = {(len(x), *x.shape[2:])}, got {cams.shape}")
        request = MetricRequest(model, x, seed, cams, scores, options, scores_kind, method, tuple(layers or ()))
        values: dict[str, np.ndarray] = {}
        for family, wanted in families.items():
            values.update(family(request, frozenset(wanted)))
        for n, result in enumerate(results):
            result[method] = {name: float(values[name][n]) for name in names}
    return results
