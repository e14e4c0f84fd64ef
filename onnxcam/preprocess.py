"""Image → network input, as the graph's metadata prescribes (pure numpy/OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .contract import Preprocess

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def preprocess(image: np.ndarray, spec: Preprocess, keep_size: bool = False) -> np.ndarray:
    """RGB uint8 ``H×W×3`` → float32 ``3×h×w``: ``(resize(image) · value_scale − mean) / std`` in ``channel_order``.

    The whole image is resized (no crop), so a map at network resolution maps back onto the full picture;
    ``keep_size``: not resized (``h×w = H×W``; for graphs with dynamic height and width).
    """
    h, w = image.shape[:2] if keep_size else spec.input_size
    resized = image if keep_size else cv2.resize(image, (w, h), interpolation=_INTERPOLATION[spec.resize])
    if spec.channel_order == "BGR":
        resized = resized[..., ::-1]
    x = resized.astype(np.float32) * np.float32(spec.value_scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[np.ndarray], spec: Preprocess) -> np.ndarray:
    """Stack :func:`preprocess` over images of any sizes → ``N×3×h×w`` float32."""
    return np.stack([preprocess(image, spec) for image in images]) if images else np.empty((0, 3, *spec.input_size))
