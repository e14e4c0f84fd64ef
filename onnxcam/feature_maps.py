"""Feature maps and filters as image grids (numpy + OpenCV): a layer's top-k channels for one image, and the first
convolution's filters.

Channels are ranked ``by="activation"`` (mean activation ``ā_c = mean_{ij} A_c[i, j]``, as in Zeiler & Fergus 2014,
"Visualizing and Understanding Convolutional Networks", showing the strongest maps) or ``by="gradient"`` (the
Grad-CAM weight ``α_c = mean_{ij} ∂y/∂A_c[i, j]``, Selvaraju et al. 2017: the channels that raise the explained class
or unit most). Each tile is its channel min-max normalised to ``[0, 1]``, shown grey, upscaled by nearest neighbour.
Filters (Krizhevsky et al. 2012, Fig. 3) are each min-max normalised, RGB for a 3-channel input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .explainer import Explainer
    from .targets import Target

RANKINGS = ("activation", "gradient")


def layer_outputs(explainer: Explainer, x: np.ndarray, layer: str, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """``(A, ∂y/∂A)`` ``[C, h, w]`` of ``layer`` for one preprocessed image ``x`` ``[1, C, H, W]``; ``y``: the class,
    class set or unit ``target`` names (a binary head's negative side: ``−logit``)."""
    from .explainer import _class_indices
    from .units import UnitTarget

    resolved = explainer.resolve_target(target)
    if isinstance(resolved, UnitTarget):
        out = explainer.run(x, np.array([-1], np.int64), unit_seed=resolved.seed[None])
    else:
        classes = _class_indices([resolved])
        out = explainer.run(
            x, np.zeros_like(classes) if explainer.binary else classes, explainer._seeds([resolved], None)
        )
    sign = -1.0 if explainer.binary and resolved == 0 else 1.0
    return out.activations[layer][0], sign * out.gradients[layer][0]


def channel_scores(activations: np.ndarray, gradients: np.ndarray | None, by: str) -> np.ndarray:
    """Per-channel ranking score ``[C]`` of one image's ``activations`` ``[C, h, w]`` (``gradients`` same shape,
    needed for ``by="gradient"``)."""
    if by not in RANKINGS:
        raise ValueError(f"unknown ranking {by!r}; choose from {', '.join(RANKINGS)}")
    source = activations if by == "activation" else gradients
    if source is None:
        raise ValueError("ranking channels by gradient needs the layer's gradient")
    if by == "gradient" and not source.any():
        raise ValueError(
            "the target's gradient at this layer is zero (the layer lies after a unit target's layer, or the unit is "
            "off): nothing to rank by; use --by activation"
        )
    return source.reshape(len(source), -1).mean(axis=1)


def top_channels(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``scores``, largest first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    return order[: max(1, min(k, len(order)))]


def normalise(tile: np.ndarray) -> np.ndarray:
    """``(t − min t) / (max t − min t)`` as float32 (all zeros for a constant tile)."""
    t = np.asarray(tile, np.float32)
    span = float(t.max() - t.min())
    return (t - t.min()) / span if span > 0 else np.zeros_like(t)


@dataclass(frozen=True)
class GridLayout:
    """Where tile ``i`` of a grid lies: ``columns`` per row, tiles ``tile = (height, width)`` pixels under a caption
    band of ``band`` pixels, ``gap`` white pixels between tiles."""

    count: int
    columns: int
    tile: tuple[int, int]
    band: int = 14
    gap: int = 4

    @property
    def rows(self) -> int:
        return -(-self.count // self.columns)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the whole grid."""
        h, w = self.tile
        return self.rows * (self.band + h + self.gap) - self.gap, self.columns * (w + self.gap) - self.gap

    def box(self, i: int) -> tuple[slice, slice]:
        """Rows and columns of tile ``i``'s pixels (below its caption)."""
        h, w = self.tile
        top = (i // self.columns) * (self.band + h + self.gap) + self.band
        left = (i % self.columns) * (w + self.gap)
        return slice(top, top + h), slice(left, left + w)


def layout_for(count: int, shape: tuple[int, int], tile_side: int = 96) -> GridLayout:
    """A near-square layout of ``count`` tiles of maps shaped ``shape = (h, w)``, scaled by an integer factor so the
    longer side is about ``tile_side`` pixels."""
    scale = max(1, round(tile_side / max(shape)))
    return GridLayout(count, int(np.ceil(np.sqrt(count))), (shape[0] * scale, shape[1] * scale))


def tile_grid(tiles: Sequence[np.ndarray], captions: Sequence[str], layout: GridLayout) -> np.ndarray:
    """uint8 RGB grid of ``tiles`` (each ``[h, w]`` grey or ``[h, w, 3]`` RGB in ``[0, 1]``), upscaled by nearest
    neighbour to ``layout.tile``, each under a caption band; white elsewhere."""
    grid = np.full((*layout.size, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        rows, cols = layout.box(i)
        big = cv2.resize(np.asarray(tile, np.float32), layout.tile[::-1], interpolation=cv2.INTER_NEAREST)
        pixels = np.uint8(np.round(255 * np.clip(big, 0, 1)))
        grid[rows, cols] = pixels[..., None] if pixels.ndim == 2 else pixels
        cv2.putText(grid, caption, (cols.start + 2, rows.start - 3), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def feature_map_grid(
    activations: np.ndarray, gradients: np.ndarray | None, k: int = 16, by: str = "activation", tile_side: int = 96
) -> tuple[np.ndarray, np.ndarray]:
    """The grid (uint8 RGB) of the top-``k`` channels of one image's ``activations`` ``[C, h, w]`` ranked ``by``, and
    the channels shown, in grid order (captions ``c<index>``)."""
    channels = top_channels(channel_scores(activations, gradients, by), k)
    layout = layout_for(len(channels), activations.shape[1:3], tile_side)
    tiles = [normalise(activations[c]) for c in channels]
    return tile_grid(tiles, [f"c{c}" for c in channels], layout), channels


def filter_grid(weights: np.ndarray, channel_order: str = "RGB", tile_side: int = 48) -> np.ndarray:
    """The filters ``[O, I, kh, kw]`` of a convolution as a grid: RGB tiles for ``I = 3`` (in RGB order whatever the
    input's ``channel_order``), grey tiles of the mean over inputs otherwise; each filter min-max normalised."""
    w = np.asarray(weights, np.float32)
    if w.ndim != 4:
        raise ValueError(f"expected convolution weights [O, I, kh, kw], got shape {w.shape}")
    if w.shape[1] == 3:
        tiles = [normalise(f.transpose(1, 2, 0)) for f in w]
        if channel_order == "BGR":
            tiles = [t[..., ::-1] for t in tiles]
    else:
        tiles = [normalise(f.mean(axis=0)) for f in w]
    layout = layout_for(len(tiles), w.shape[2:4], tile_side)
    return tile_grid(tiles, [str(i) for i in range(len(tiles))], layout)


def first_conv_weights(model_path: str) -> np.ndarray:
    """The weights ``[O, I, kh, kw]`` of the first ``Conv`` node of an ONNX file (needs the ``onnx`` package, the
    ``export`` extra; ``ValueError`` in one line without it or when the weights are not an initializer)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ValueError(
            "--filters reads the ONNX initializers with the onnx package: pip install 'onnxcam[export]'"
        ) from None
    model = onnx.load(model_path, load_external_data=False)  # a large graph's weights: only the filters are read
    weights = {t.name: t for t in model.graph.initializer}
    conv = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise ValueError(f"{model_path}: no Conv node, so no filters to show")
    if conv.input[1] not in weights:
        raise ValueError(f"{model_path}: the first Conv's weights '{conv.input[1]}' are computed, not stored")
    return numpy_helper.to_array(weights[conv.input[1]], os.path.dirname(model_path)).astype(np.float32)
