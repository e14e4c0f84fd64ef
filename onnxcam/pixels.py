"""Image arrays → the channels a model takes (pure numpy/OpenCV); the one conversion for files and API arrays.

Accepted, for a model with ``C`` input channels:

* ``dtype``: uint8 (0–255), or float with every value in ``[0, 1]`` (taken as such, never divided by 255 again:
  quantised to 0–255 as float image files are, ``round(255·v)``);
* shape ``H×W`` (grey), ``H×W×1`` (grey), ``H×W×3`` (RGB), ``H×W×4`` (RGBA: alpha dropped) for ``C`` = 1 or 3
  (grey is replicated to RGB for ``C`` = 3, RGB converted to grey for ``C`` = 1, ITU-R BT.601 weights as OpenCV);
* ``H×W×C`` exactly for any other ``C`` (e.g. a 4-channel model takes 4-channel arrays as given).

Anything else (float values outside ``[0, 1]``, other integer types, other shapes) raises :class:`PixelFormatError`
naming the expected format.
"""

from __future__ import annotations

import cv2
import numpy as np


class PixelFormatError(ValueError):
    """An image array this model cannot take; the message names the expected format."""


def expected_format(channels: int) -> str:
    """The accepted arrays of a ``channels``-input model, in words."""
    shapes = "H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA)" if channels in (1, 3) else f"H×W×{channels}"
    return f"{shapes}, uint8 0–255 or float in [0, 1]"


def _refuse(image: np.ndarray, channels: int, cause: str) -> PixelFormatError:
    return PixelFormatError(
        f"image array {image.dtype} {tuple(image.shape)}: {cause}; this model takes {expected_format(channels)}"
    )


def files_refusal(channels: int) -> str | None:
    """Why image files cannot feed a ``channels``-input model (they decode to grey or colour), or ``None``."""
    if channels in (1, 3):
        return None
    return (
        f"this model takes {channels} input channels; image files decode to grey or RGB only: "
        f"pass H×W×{channels} arrays to Explainer.explain"
    )


def to_uint8(image: np.ndarray, channels: int) -> np.ndarray:
    """``image`` as uint8: uint8 as is, float in ``[0, 1]`` as ``round(255·v)``; anything else raises."""
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind != "f":
        raise _refuse(image, channels, f"{image.dtype} pixels are not accepted (convert to uint8 or float in [0, 1])")
    if image.size and not np.isfinite(image).all():
        raise _refuse(image, channels, "values are not finite")
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if low < 0 or high > 1:
        raise _refuse(image, channels, f"float values span [{low:.4g}, {high:.4g}], not [0, 1] (never rescaled here)")
    return (image.astype(np.float32) * 255.0 + 0.5).astype(np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An RGB(A)/grey uint8 array → ``H×W×channels``, converting colour as the module docstring says."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise _refuse(image, channels, "not an image array")
    have = image.shape[2]
    if have == channels:
        return image
    if channels not in (1, 3) or have not in (1, 3, 4):
        raise _refuse(image, channels, f"{have} channels")
    if have == 4:
        image, have = np.ascontiguousarray(image[..., :3]), 3
        if have == channels:
            return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return np.repeat(image, 3, axis=2)


def model_pixels(image: np.ndarray, channels: int) -> np.ndarray:
    """Validate and convert an image array for a ``channels``-input model: ``H×W×channels`` uint8."""
    return to_channels(to_uint8(np.asarray(image), channels), channels)
