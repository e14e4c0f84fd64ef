"""Reading images robustly into RGB uint8 arrays (OpenCV only).

Before anything is decoded, the file's header (:mod:`onnxcam.image_header`) is checked: an image declaring more than
``max_pixels`` pixels (a decompression bomb: a small file that would decode into gigabytes) and a PNG or JPEG cut
short are refused. OpenCV applies the EXIF orientation itself (JPEG, PNG ``eXIf``, WebP, TIFF), and converts CMYK
JPEGs to RGB; :func:`to_rgb8` brings grey, alpha and 16-bit/float data to RGB uint8.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .image_header import read_header

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})

#: Largest image :func:`read_image` decodes, in pixels (width × height), unless told otherwise.
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image; the message names the file and the cause."""


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any decoded array → ``H×W×3`` RGB uint8: grey is replicated, alpha dropped, 16-bit/float rescaled.

    ``image`` is in OpenCV's channel order, BGR(A).
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


def too_large(width: int, height: int, max_pixels: int) -> str | None:
    """The refusal of a ``width × height`` image above ``max_pixels``, or ``None`` when it is within the limit."""
    if width * height <= max_pixels:
        return None
    return (
        f"image too large: {width}x{height} = {width * height / 1e6:g} megapixels, "
        f"the limit is {max_pixels / 1e6:g} megapixels"
    )


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` to RGB uint8, applying the EXIF orientation (what a person sees).

    Grey, 16-bit, RGBA and CMYK files are converted. ``max_pixels`` (default :data:`MAX_PIXELS`) bounds width × height,
    checked on the header before decoding. Anything unreadable raises :class:`ImageError` ``"<path>: <cause>"``.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    header = read_header(data)
    refusal = too_large(*header.size, limit) if header is not None and header.size else None
    if refusal is not None:
        raise ImageError(f"{path}: {refusal}")
    if header is not None and not header.complete:
        raise ImageError(f"{path}: not a decodable image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageError(f"{path}: not a decodable image")
    refusal = too_large(image.shape[1], image.shape[0], limit)  # formats whose header gives no size
    if refusal is not None:
        raise ImageError(f"{path}: {refusal}")
    try:
        return to_rgb8(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
