"""ROAD: remove and debias (Rong et al., ICML 2022; docs/METHODS.md, Faithfulness metrics; pytorch-grad-cam's ``road``).

At percentile ``p``, *MoRF* removes the pixels whose saliency is ≥ the ``p``-th percentile of the map (numpy's linear
percentile; the reference keeps ``map < threshold``): the ``(100 − p)`` % most relevant pixels. *LeRF* does the same
on ``1 − map``: the ``(100 − p)`` % least relevant. The removed pixels are
filled by :func:`~onnxcam.metrics.imputation.noisy_linear_imputation` (option ``road_noise``, default 0.01; the noise
comes from ``numpy.random.default_rng(road_seed)``, default seed 0, drawn afresh for each image so a value does not
depend on the batch), and the score change ``s(imputed) − s(x)`` is measured (``s`` as the ``metric_score`` option
says: the logit ``y`` by default, or the probability).

- ``road_morf`` at ``road_morf_percentile`` (default 80), ``road_lerf`` at ``road_lerf_percentile`` (default 20);
- ``road_morf_avg`` / ``road_lerf_avg``: the mean over ``road_percentiles`` (default 10, 20, …, 90);
- ``road_combined = (road_lerf_avg − road_morf_avg) / 2``.

MoRF: lower is better; LeRF and combined: higher is better. Each image costs one imputation and one forward pass per
(order, percentile) needed.
"""

from __future__ import annotations

import numpy as np

from .base import Metric, MetricOption, MetricRequest, declare_option, register
from .imputation import noisy_linear_imputation

MORF, LERF = "morf", "lerf"
PERCENTILES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
MORF_PERCENTILE = declare_option(
    MetricOption(
        "road_morf_percentile",
        80.0,
        "road_morf removes the pixels at or above this percentile of the map",
        low=0,
        high=100,
    )
)
LERF_PERCENTILE = declare_option(
    MetricOption(
        "road_lerf_percentile", 20.0, "road_lerf removes those at or above this percentile of 1 − map", low=0, high=100
    )
)
AVERAGED = declare_option(
    MetricOption(
        "road_percentiles", PERCENTILES, "percentiles of road_morf_avg, road_lerf_avg, road_combined", low=0, high=100
    )
)
NOISE = declare_option(MetricOption("road_noise", 0.01, "std of the imputation noise (normalised input units)", low=0))
RANDOM_SEED = declare_option(MetricOption("road_seed", 0, "seed of the imputation noise (per image)", low=0))


def removal_mask(cam: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """Pixels ``[H, W]`` ROAD removes: ``m ≥ percentile(m, p)`` with ``m = map`` (MoRF) or ``1 − map`` (LeRF)."""
    m = cam if order == MORF else 1.0 - cam
    return m >= np.percentile(m, percentile)


def needed(names: frozenset[str], morf: float, lerf: float, averaged: tuple[float, ...]) -> list[tuple[str, float]]:
    """The ``(order, percentile)`` imputations the metrics ``names`` need, each once."""
    wanted: list[tuple[str, float]] = []
    for order, single in ((MORF, morf), (LERF, lerf)):
        if f"road_{order}" in names:
            wanted.append((order, single))
        if f"road_{order}_avg" in names or "road_combined" in names:
            wanted += [(order, p) for p in averaged]
    return list(dict.fromkeys(wanted))


def road_family(request: MetricRequest, names: frozenset[str]) -> dict[str, np.ndarray]:
    """The ROAD metrics in ``names``: score changes after imputing the removed pixels, per image."""
    morf, lerf, averaged = (request.option(o) for o in (MORF_PERCENTILE, LERF_PERCENTILE, AVERAGED))
    noise, random_seed = request.option(NOISE), request.option(RANDOM_SEED)
    plan = needed(names, morf, lerf, averaged)
    before = request.target_values(request.scores, request.seed)
    change = np.zeros((len(request.x), len(plan)))
    for n, (x, cam) in enumerate(zip(request.x, request.maps, strict=True)):
        rng = np.random.default_rng(random_seed)
        imputed = np.stack(
            [noisy_linear_imputation(x, removal_mask(cam, p, order), noise, rng) for order, p in plan]
        ).astype(x.dtype)
        change[n] = request.target_values(request.model.scores(imputed), request.seed[n : n + 1]) - before[n]
    column = {key: change[:, i] for i, key in enumerate(plan)}

    def average(order: str) -> np.ndarray:
        return np.mean([column[(order, p)] for p in averaged], axis=0)

    values = {
        "road_morf": lambda: column[(MORF, morf)],
        "road_lerf": lambda: column[(LERF, lerf)],
        "road_morf_avg": lambda: average(MORF),
        "road_lerf_avg": lambda: average(LERF),
        "road_combined": lambda: (average(LERF) - average(MORF)) / 2,
    }
    return {name: values[name]() for name in names}


for _name, _higher in (
    ("road_morf", False),
    ("road_lerf", True),
    ("road_morf_avg", False),
    ("road_lerf_avg", True),
    ("road_combined", True),
):
    register(Metric(_name, road_family, _higher))
