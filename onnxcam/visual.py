"""Heat-map overlays and method-comparison grids (numpy + OpenCV).

:func:`show_cam_on_image` reproduces pytorch-grad-cam's ``utils.image.show_cam_on_image``; :func:`overlay` and
:func:`method_grid` build on it for uint8 RGB images of any size.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend ``colormap(mask)`` over ``img``: ``uint8(255 · c / max(c))`` with ``c = (1−w)·heat + w·img``.

    ``img`` is float in ``[0, 1]`` (RGB or BGR), ``mask`` a ``[H, W]`` map in ``[0, 1]`` of the same size; the heat map
    is BGR unless ``use_rgb``. Same output as pytorch-grad-cam for such inputs; in addition a mask outside ``[0, 1]``
    is clipped (the reference wraps around in the uint8 cast) and NaN counts as 0, and a black result stays black
    instead of dividing by zero.
    """
    if np.max(img) > 1:
        raise ValueError("The input image should np.float32 in the range [0, 1]")
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight should be in the range [0, 1]. Got: {image_weight}")
    clean = np.clip(np.nan_to_num(np.asarray(mask), nan=0.0), 0, 1)
    heatmap = cv2.applyColorMap(np.uint8(255 * clean), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = np.float32(heatmap) / 255
    cam = (1 - image_weight) * heatmap + image_weight * img
    peak = np.max(cam)
    if peak > 0:
        cam = cam / peak
    return np.uint8(255 * cam)


def overlay(image: np.ndarray, cam_map: np.ndarray, alpha: float = 0.5, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Heat map of ``cam_map`` (``[h, w]`` in ``[0, 1]``, any resolution) over ``image``, at the image's own size.

    ``image``: uint8 RGB ``[H, W, 3]`` (grayscale ``[H, W]`` and RGBA are accepted; float images must be in
    ``[0, 1]``). The map is resized to ``(W, H)`` with ``INTER_LINEAR``; ``alpha`` is the heat map's weight.
    Returns uint8 RGB ``[H, W, 3]``, equal to :func:`show_cam_on_image` on the whole image but computed in strips of
    about a megapixel, two passes (the peak, then the blend): besides the map, memory is the output plus ~16 MB.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = np.asarray(cam_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"cam_map must be one [h, w] map, got shape {m.shape}")
    height, width = np.asarray(image).shape[:2]
    mask = m if m.shape == (height, width) else cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
    step = max(1, 2**20 // max(width, 1))
    strips = [slice(y, y + step) for y in range(0, height, step)]
    weight = 1 - alpha

    def blended(rows: slice) -> np.ndarray:
        heat = cv2.applyColorMap(np.uint8(255 * np.clip(np.nan_to_num(mask[rows], nan=0.0), 0, 1)), colormap)
        heat = np.float32(cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)) / 255
        return (1 - weight) * heat + weight * _float_rgb(np.asarray(image)[rows])  # as show_cam_on_image

    peak = max((float(blended(rows).max()) for rows in strips), default=0.0)
    out = np.empty((height, width, 3), np.uint8)
    for rows in strips:
        cam = blended(rows)
        out[rows] = np.uint8(255 * (cam / np.float32(peak) if peak > 0 else cam))
    return out


def caption_band(width: int, text: str, height: int | None = None) -> np.ndarray:
    """A white uint8 RGB band ``[height, width, 3]`` with ``text`` in black, left-aligned, shrunk to fit the width.

    ``height`` defaults to ``clip(width / 24, 20, 96)`` pixels, legible at the image's own size.
    """
    band = height or int(np.clip(width // 24, 20, 96))
    strip = np.full((band, width, 3), 255, dtype=np.uint8)
    (text_w, text_h), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = min(0.55 * band / max(text_h, 1), (width - 8) / max(text_w, 1))
    thickness = max(1, round(scale * 1.2))
    (_, text_h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    cv2.putText(strip, text, (4, (band + text_h) // 2), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def with_caption(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (uint8 RGB) with a :func:`caption_band` of ``text`` below it."""
    return np.concatenate([image, caption_band(image.shape[1], text)], axis=0)


def method_grid(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
    tile_height: int = 256,
    title_height: int | None = None,
    original_title: str = "original",
    gap: int = 4,
    columns: int = 4,
    caption: str | None = None,
) -> np.ndarray:
    """One uint8 RGB image ``original | method 1 | method 2 …``, each tile under a title band naming it, wrapped to
    rows of at most ``columns`` tiles, with an optional ``caption`` band below (e.g. the class and probability).

    Tiles keep the image's aspect ratio at ``tile_height`` pixels (the width capped at ``2·tile_height``); ``maps``
    maps a title to a ``[h, w]`` map in ``[0, 1]`` (overlaid as in :func:`overlay`); ``gap`` white pixels separate
    the tiles. A 9-method grid of square images is 4 × 3 tiles, about 1,040 × 880 pixels.
    """
    rgb = np.uint8(np.round(255 * _float_rgb(image)))
    tile_width = max(1, min(2 * tile_height, round(rgb.shape[1] * tile_height / rgb.shape[0])))
    base = cv2.resize(rgb, (tile_width, tile_height), interpolation=cv2.INTER_AREA)
    band = title_height or max(16, tile_height // 8)
    tiles = [_titled(base, original_title, band)]
    tiles += [_titled(overlay(base, m, alpha, colormap), title, band) for title, m in maps.items()]
    per_row = max(1, min(columns, len(tiles)))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % per_row)
    spacer = np.full((tile_height + band, gap, 3), 255, dtype=np.uint8)
    rows = []
    for start in range(0, len(tiles), per_row):
        row = [tiles[start]]
        for tile in tiles[start + 1 : start + per_row]:
            row += [spacer, tile]
        rows.append(np.concatenate(row, axis=1))
    between = np.full((gap, rows[0].shape[1], 3), 255, dtype=np.uint8)
    grid = np.concatenate([part for row in rows for part in (row, between)][:-1], axis=0)
    return with_caption(grid, caption) if caption else grid


def _titled(tile: np.ndarray, title: str, band: int) -> np.ndarray:
    """``tile`` under a white band of height ``band`` with ``title`` centred in black, shrunk to fit."""
    width = tile.shape[1]
    header = np.full((band, width, 3), 255, dtype=np.uint8)
    (text_w, text_h), _ = cv2.getTextSize(title, _FONT, 1.0, 1)
    font_scale = min(0.6 * band / max(text_h, 1), (width - 4) / max(text_w, 1))
    (text_w, text_h), _ = cv2.getTextSize(title, _FONT, font_scale, 1)
    origin = ((width - text_w) // 2, (band + text_h) // 2)
    cv2.putText(header, title, origin, _FONT, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, tile], axis=0)


def _float_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 RGB ``[H, W, 3]`` in ``[0, 1]`` (uint8 / 255; gray repeated; alpha channel dropped)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    out = img.astype(np.float32)
    if out.size and (out.min() < 0 or out.max() > 1):
        raise ValueError("a float image must have values in [0, 1]; pass uint8 for 0..255 pixels")
    return out
