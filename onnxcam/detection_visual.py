"""Pictures of per-box explanations: each box's map renormalised inside its box, boxes and labels drawn on top.

As pytorch-grad-cam's ``renormalize_cam_in_bounding_boxes`` (its YOLO / Faster R-CNN tutorials): inside box ``b``,
``m_b ← (m_b − min_b) / (max_b − min_b)``; the picture shows, per pixel, the largest renormalised map of the boxes
covering it (zero outside every box).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .detection import Box
from .visual import overlay

_COLOUR, _OUTLINE = (255, 255, 255), (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def image_boxes(boxes: Sequence[Box], image_size: tuple[int, int], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Each box's ``xyxy`` in image pixels, clipped and rounded to ints ``(x0, y0, x1, y1)``; ``image_size`` and
    ``input_size`` are ``(H, W)`` of the image and of the network input (the whole image is resized, no letterbox)."""
    h, w = image_size
    sy, sx = h / input_size[0], w / input_size[1]
    return [np.clip(np.round(box.scaled(sx, sy)), 0, [w, h, w, h]).astype(int) for box in boxes]


def renormalized_in_boxes(maps: np.ndarray, corners: Sequence[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """``maps`` ``[B, h, w]`` (any resolution) → one ``[H, W]`` map in ``[0, 1]``: per box its map resized to the image,
    renormalised inside the box, maximum over boxes."""
    h, w = image_size
    out = np.zeros((h, w), np.float32)
    for m, (x0, y0, x1, y1) in zip(maps, corners, strict=True):
        if x1 <= x0 or y1 <= y0:
            continue
        inside = cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        inside = inside - inside.min()
        inside = inside / (inside.max() + 1e-7)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], inside)
    return out


def detection_overlay(
    image: np.ndarray,
    boxes: Sequence[Box],
    maps: np.ndarray,
    input_size: tuple[int, int],
    alpha: float = 0.5,
) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: :func:`renormalized_in_boxes` over ``image`` with each box and ``label score``.

    Lines and labels scale with the image (:func:`_draw_box`): legible at the image's own size."""
    corners = image_boxes(boxes, image.shape[:2], input_size)
    picture = overlay(image, renormalized_in_boxes(maps, corners, image.shape[:2]), alpha=alpha)
    for box, xyxy in zip(boxes, corners, strict=True):
        _draw_box(picture, xyxy, f"{box.label or f'class {box.class_index}'} {box.score:.2f}")
    return picture


def _draw_box(picture: np.ndarray, xyxy: np.ndarray, text: str) -> None:
    """Draw a white box (black outline, so it shows on light and dark parts) and ``text`` in white on a black tab
    above it (inside it at the image's top edge), in place; text height ``clip(min(H, W) / 40, 9, 48)`` pixels."""
    x0, y0, x1, y1 = (int(v) for v in xyxy)
    side = min(picture.shape[:2])
    line = max(1, round(side / 400))
    cv2.rectangle(picture, (x0, y0), (x1, y1), _OUTLINE, line + 2)
    cv2.rectangle(picture, (x0, y0), (x1, y1), _COLOUR, line)
    (_, unit_h), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = float(np.clip(side / 40, 9, 48)) / unit_h
    thickness = max(1, round(scale * 1.5))
    (text_w, text_h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(2, text_h // 4)
    tab_h = text_h + base + pad
    top = y0 - tab_h if y0 - tab_h >= 0 else y0
    cv2.rectangle(picture, (x0, top), (x0 + text_w + 2 * pad, top + tab_h), _OUTLINE, cv2.FILLED)
    cv2.putText(picture, text, (x0 + pad, top + text_h + pad // 2), _FONT, scale, _COLOUR, thickness, cv2.LINE_AA)
