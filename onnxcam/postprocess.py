"""Post-processing shared by every CAM (METHODS.md, "Post-processing"), as pytorch-grad-cam 1.5.x orders it.

Per layer (``BaseCAM.compute_cam_per_layer``): ReLU, per-image min-max normalisation ``(m − min) / (max + 1e-7)``,
then ``cv2.resize`` to the input's ``(W, H)`` with ``INTER_LINEAR`` (*after* normalising). Several layers
(``BaseCAM.aggregate_multi_layers``): mean over layers of ``max(map, 0)``, normalised again (``scale_cam_image``).
Pure numpy + OpenCV, float32; maps are ``[N, h, w]`` (any leading shape works: the last two axes are ``h, w``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

_EPS = np.float32(1e-7)


def relu(maps: np.ndarray) -> np.ndarray:
    """``max(m, 0)`` as float32."""
    return np.maximum(np.asarray(maps, dtype=np.float32), np.float32(0))


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per image ``m ← m − min(m)``; ``m ← m / (max(m) + 1e-7)`` (an all-zero or constant map becomes zero, no NaN)."""
    m = _as_maps(maps)
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (_EPS + m.max(axis=(-2, -1), keepdims=True))


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize every map to ``size = (W, H)`` with ``cv2.resize(..., INTER_LINEAR)``: ``[N, h, w] -> [N, H, W]``."""
    m = _as_maps(maps)
    width, height = (int(v) for v in size)
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.empty((flat.shape[0], height, width), dtype=np.float32)
    for i, one in enumerate(flat):
        out[i] = cv2.resize(one, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*m.shape[:-2], height, width)


def scale(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`normalize`, then :func:`resize` to ``(W, H)`` when ``size`` is given (``scale_cam_image``)."""
    m = normalize(maps)
    return m if size is None else resize(m, size)


def layer_map(raw: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """One layer's raw map ``[N, h, w]`` → ReLU → normalise → resize to ``(W, H)``: values in ``[0, 1]``."""
    return scale(relu(raw), size)


def fuse(layer_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over layers of ``max(map, 0)``, normalised again; the maps must share one ``[N, H, W]`` shape."""
    shapes = {np.shape(m) for m in layer_maps}
    if len(shapes) != 1:
        raise ValueError(f"cannot fuse layer maps of different shapes {sorted(shapes)}; resize them to one size first")
    if len(layer_maps) == 1:  # the mean over one layer is the map itself: skip the stack and the mean (same bits)
        return normalize(relu(layer_maps[0]))
    stacked = np.stack([relu(m) for m in layer_maps], axis=1)
    return normalize(stacked.mean(axis=1))


def postprocess(raw_per_layer: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
    """The full reference pipeline: :func:`layer_map` per layer (resized to ``size = (W, H)``), then :func:`fuse`.

    Matches pytorch-grad-cam's ``aggregate_multi_layers(compute_cam_per_layer(...))`` — also for one layer, where
    the fusion step renormalises an already normalised map (a no-op up to the ``1e-7`` epsilon, as in the reference).
    """
    if not raw_per_layer:
        raise ValueError("no layer maps to post-process")
    return fuse([layer_map(raw, size) for raw in raw_per_layer])


@dataclass(frozen=True)
class MapStats:
    """Summary of one normalised map for reports.

    ``frac_above``: fraction of pixels above ``threshold`` (how much of the image the map highlights).
    ``entropy``: Shannon entropy of the map seen as a distribution ``p = m / Σ m``, divided by ``log(#pixels)``:
    1 = uniform, near 0 = one hot spot; 0 for an all-zero map.
    """

    min: float
    max: float
    mean: float
    frac_above: float
    threshold: float
    entropy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def blank_map_warning(
    method: str, subject: str = "the explained score", cause: str = "a layer the scores do not read"
) -> str:
    """The line for ``method``'s map that is 0 everywhere (a blank overlay is no explanation, and must say so):
    nothing at the layer raises ``subject``; ``cause``: the model kind's likeliest reason besides the common ones."""
    return (
        f"{method}: the map is 0 everywhere: nothing at the layer raises {subject} for this method (its gradient "
        f"there is 0, e.g. an int8 score saturated at its quantization range or {cause}, or every position weighs in "
        "negatively); try another layer, class or method"
    )


def map_stats(maps: np.ndarray, threshold: float = 0.5) -> list[MapStats]:
    """:class:`MapStats` of each map of ``maps`` ``[N, H, W]`` (or one ``[H, W]`` map → a one-element list)."""
    m = _as_maps(maps)
    m = m.reshape(-1, *m.shape[-2:])
    flat = np.maximum(m.reshape(m.shape[0], -1).astype(np.float64), 0.0)
    totals = flat.sum(axis=1, keepdims=True)
    p = np.divide(flat, totals, out=np.zeros_like(flat), where=totals > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=1) / max(np.log(flat.shape[1]), 1e-12)
    return [
        MapStats(
            min=float(m[i].min()),
            max=float(m[i].max()),
            mean=float(m[i].mean()),
            frac_above=float((m[i] > threshold).mean()),
            threshold=float(threshold),
            entropy=float(entropy[i]),
        )
        for i in range(m.shape[0])
    ]


def _as_maps(maps: np.ndarray) -> np.ndarray:
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim < 2:
        raise ValueError(f"maps must be [N, h, w] (or one [h, w] map), got shape {m.shape}")
    return m
