"""Reading images robustly into RGB uint8 arrays (OpenCV only)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image; the message names the file and the cause."""


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any decoded array → ``H×W×3`` RGB uint8: grey is replicated, alpha dropped, 16-bit/float rescaled.

    Arrays from OpenCV are BGR(A); call with ``bgr=False`` data already in RGB order via :func:`as_rgb8`.
    """
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"unsupported image shape {image.shape}")
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to RGB uint8, applying the EXIF orientation (what a person sees).

    Grey, 16-bit and RGBA files are converted; anything unreadable raises :class:`ImageError`.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageError(f"{path}: not a decodable image")
    try:
        return to_rgb8(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
