"""Map-only metrics (no forward pass; docs/METHODS.md, "Localisation and complexity metrics").

- ``pointing_game`` (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018): 1 when the map's
  maximum (first in raster order) lies within ``pointing_tolerance`` pixels (default 15, the paper's) of the object,
  else 0; the mean over images is the pointing accuracy. The object is a box ``pointing_box = x0,y0,x1,y1`` in the
  network input's pixels (corners inclusive; ``4·N`` numbers give one box per image), or any mask through
  :func:`pointing_hit`. Higher is better.
- ``sparseness``: the Gini index of the map (Chalasani et al., "Concise explanations of neural networks using
  adversarial training", ICML 2020; Quantus' ``Sparseness``): for the ``n`` values sorted ascending,
  ``G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i))``, in ``[0, 1)``; higher is sparser.
- ``complexity``: the entropy of the map's fractional contributions (Bhatt et al., "Evaluating and aggregating
  feature-based model explanations", IJCAI 2020; Quantus' ``Complexity``): ``−Σ_i p_i ln p_i``, ``p_i = a_i / Σ a``,
  in ``[0, ln n]``; lower is simpler.

The maps are the final ones, in ``[0, 1]``; an all-zero map counts as a constant one (Gini 0, entropy ``ln n``).
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import Metric, MetricOption, MetricRequest, declare_option, register

BOX = declare_option(
    MetricOption(
        "pointing_box", (), "pointing_game's object: x0,y0,x1,y1 in input pixels (4·N numbers: per image)", low=0
    )
)
TOLERANCE = declare_option(
    MetricOption("pointing_tolerance", 15.0, "pointing_game: pixels the maximum may lie off the object", low=0)
)


def pointing_hit(saliency: np.ndarray, region: np.ndarray, tolerance: float = 15.0) -> bool:
    """Whether the maximum of ``saliency`` ``[H, W]`` (first in raster order) lies within Euclidean distance
    ``tolerance`` (pixels) of a pixel of ``region`` ``[H, W]`` (bool); ValueError when the region is empty."""
    region = np.asarray(region, bool)
    if not region.any():
        raise ValueError("pointing_game: the object's region is empty")
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    distance = cv2.distanceTransform(np.uint8(~region), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return bool(distance[y, x] <= tolerance)


def box_mask(box: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    """The pixels ``[H, W]`` of the box ``(x0, y0, x1, y1)`` (corners inclusive, clipped to the image)."""
    x0, y0, x1, y1 = box
    rows, cols = np.arange(size[0])[:, None], np.arange(size[1])[None, :]
    return (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)


def boxes(request: MetricRequest) -> list[tuple[float, ...]]:
    """One box per image from the ``pointing_box`` option; ValueError naming the option when missing or misshapen."""
    values = tuple(request.option(BOX))
    n = len(request.maps)
    if len(values) not in (4, 4 * n):
        raise ValueError(
            f"pointing_game needs the object: option pointing_box=x0,y0,x1,y1 (input pixels) or 4·N = {4 * n} numbers,"
            f" got {len(values)}"
        )
    return [values[4 * i : 4 * i + 4] for i in range(n)] if len(values) == 4 * n else [values] * n


def gini(a: np.ndarray) -> float:
    """Gini index of the non-negative values ``a`` (0 for an all-zero ``a``)."""
    values = np.sort(np.asarray(a, np.float64).ravel())
    total = values.sum()
    if total <= 0:
        return 0.0
    i = np.arange(1, len(values) + 1)
    return float(((2 * i - len(values) - 1) * values).sum() / (len(values) * total))


def entropy(a: np.ndarray) -> float:
    """``−Σ p ln p`` of ``p = a / Σ a`` (``ln n`` for an all-zero ``a``)."""
    values = np.asarray(a, np.float64).ravel()
    total = values.sum()
    p = values / total if total > 0 else np.full(len(values), 1 / len(values))
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def localisation_family(request: MetricRequest, names: frozenset[str]) -> dict[str, np.ndarray]:
    """The map-only metrics in ``names``, per image."""
    values: dict[str, np.ndarray] = {}
    if "pointing_game" in names:
        tolerance, size = request.option(TOLERANCE), request.maps.shape[1:]
        values["pointing_game"] = np.array(
            [
                float(pointing_hit(m, box_mask(b, size), tolerance))
                for m, b in zip(request.maps, boxes(request), strict=True)
            ]
        )
    if "sparseness" in names:
        values["sparseness"] = np.array([gini(m) for m in request.maps])
    if "complexity" in names:
        values["complexity"] = np.array([entropy(m) for m in request.maps])
    return values


register(Metric("pointing_game", localisation_family, True, in_all=False))
register(Metric("sparseness", localisation_family, True))
register(Metric("complexity", localisation_family, False))
