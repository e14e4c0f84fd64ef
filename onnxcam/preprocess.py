"""Image → network input, as the graph's metadata prescribes (pure numpy/OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .contract import Preprocess
from .pixels import model_pixels

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def preprocess(image: np.ndarray, spec: Preprocess, keep_size: bool = False) -> np.ndarray:
    """Image array → float32 ``C×h×w``: ``(resize(pixels) · value_scale − mean) / std`` in ``channel_order``.

    ``image``: RGB/grey/RGBA uint8, or float in [0, 1], converted to uint8 pixels with the model's
    ``spec.channels`` by :func:`onnxcam.pixels.model_pixels` (which refuses other formats), as image files are. The
    resized pixels are integers 0–255, exactly what a model taking uint8 receives.
    The whole image is resized (no crop), so a map at network resolution maps back onto the full picture;
    ``keep_size``: not resized (``h×w = H×W``; for graphs with dynamic height and width).
    """
    pixels = model_pixels(image, spec.channels)
    h, w = pixels.shape[:2] if keep_size else spec.input_size
    resized = pixels if keep_size else cv2.resize(pixels, (w, h), interpolation=_INTERPOLATION[spec.resize])
    resized = resized.reshape(h, w, spec.channels)
    if spec.channel_order == "BGR":
        resized = resized[..., ::-1]
    x = resized.astype(np.float32) * np.float32(spec.value_scale)
    x = (x - np.asarray(spec.per_channel(spec.mean), np.float32)) / np.asarray(spec.per_channel(spec.std), np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[np.ndarray], spec: Preprocess) -> np.ndarray:
    """Stack :func:`preprocess` over images of any sizes → ``N×C×h×w`` float32."""
    if not images:
        return np.empty((0, spec.channels, *spec.input_size), np.float32)
    return np.stack([preprocess(image, spec) for image in images])
