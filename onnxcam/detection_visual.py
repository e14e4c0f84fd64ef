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

_COLOUR = (255, 255, 255)


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
    """uint8 RGB ``[H, W, 3]``: :func:`renormalized_in_boxes` over ``image`` with each box and ``label score``."""
    corners = image_boxes(boxes, image.shape[:2], input_size)
    picture = overlay(image, renormalized_in_boxes(maps, corners, image.shape[:2]), alpha=alpha)
    for box, (x0, y0, x1, y1) in zip(boxes, corners, strict=True):
        cv2.rectangle(picture, (int(x0), int(y0)), (int(x1), int(y1)), _COLOUR, 1)
        name = box.label or f"class {box.class_index}"
        cv2.putText(picture, f"{name} {box.score:.2f}", (int(x0), max(int(y0) - 3, 9)), 0, 0.35, _COLOUR, 1)
    return picture
