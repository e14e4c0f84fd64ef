"""Reading images robustly into RGB uint8 arrays (OpenCV only).

:func:`load_image` decodes no larger than asked (a JPEG at 1/2, 1/4 or 1/8 scale by libjpeg itself), for the batch
job's capped artefacts. Before anything is decoded, the file's header (:mod:`onnxcam.image_header`) is checked: an
image declaring more than ``max_pixels`` pixels (a decompression bomb: a small file that would decode into gigabytes)
and a PNG or JPEG cut short are refused. OpenCV applies the EXIF orientation itself (JPEG, PNG ``eXIf``, WebP, TIFF),
and converts CMYK JPEGs to RGB; :func:`to_rgb8` brings grey, alpha and 16-bit/float data to RGB uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .image_header import ImageHeader, read_header

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})

#: OpenCV's flags for libjpeg's scaled decoding, by scale-down factor.
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

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


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image, possibly smaller than the file: ``image`` RGB uint8 ``[h, w, 3]`` and the file's own
    ``original_size`` ``(H, W)`` (after the EXIF orientation)."""

    image: np.ndarray
    original_size: tuple[int, int]


def capped_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` scaled down (aspect kept, rounded, at least 1) so that the longer side is at most ``max_side``;
    unchanged when it already is or when ``max_side`` is ``None`` or 0."""
    longest = max(height, width)
    if not max_side or longest <= max_side:
        return height, width
    return max(1, round(height * max_side / longest)), max(1, round(width * max_side / longest))


def jpeg_reduction(width: int, height: int, need: tuple[int, int]) -> int:
    """The largest factor ``f`` in 8, 4, 2, 1 at which libjpeg's scaled decoding (``cv2.IMREAD_REDUCED_COLOR_f``)
    still gives at least ``need = (h, w)`` pixels on both axes, whichever way the EXIF orientation turns the image."""
    low, high = sorted(need)
    short, long = sorted((width, height))
    return next((f for f in (8, 4, 2) if short // f >= low and long // f >= high), 1)


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    min_size: tuple[int, int] = (1, 1),
) -> LoadedImage:
    """Decode ``path`` no larger than needed: the longer side at most ``max_side`` (``None``: full size) but never
    below ``min_size`` ``(h, w)`` (the network input), RGB uint8, EXIF orientation applied.

    A JPEG is decoded at a reduced scale by libjpeg itself (1/2, 1/4 or 1/8: ``cv2.IMREAD_REDUCED_COLOR_*``), so a
    99-megapixel photo never exists in memory at full size; other formats are decoded in full, then shrunk
    (``INTER_AREA``). Memory per image: the decoded image (for a JPEG under 4× the ``max_side``² output, 3 bytes per
    pixel) plus the output. Checks and errors as :func:`read_image`.
    """
    path = Path(path)
    data = _read_bytes(path)
    header = _checked_header(path, data, MAX_PIXELS if max_pixels is None else max_pixels)
    max_side = max(max_side, *min_size) if max_side else None
    flags, factor = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, 1
    if header is not None and header.format == "JPEG" and header.size and max_side:
        width, height = header.size
        out_h, out_w = capped_size(height, width, max_side)
        factor = jpeg_reduction(width, height, (max(out_h, *min_size), max(out_w, *min_size)))
        flags = _REDUCED.get(factor, flags)
    image = _decode(path, data, flags, max_pixels)
    del data
    original = image.shape[:2]
    if factor > 1 and header is not None and header.size:
        width, height = header.size
        original = (height, width) if (image.shape[0] > image.shape[1]) == (height > width) else (width, height)
    target = capped_size(*image.shape[:2], max_side) if factor == 1 else capped_size(*original, max_side)
    target = (min(target[0], image.shape[0]), min(target[1], image.shape[1]))
    if target != image.shape[:2]:
        image = cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_AREA)
    try:
        return LoadedImage(to_rgb8(image), original)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` to RGB uint8, applying the EXIF orientation (what a person sees).

    Grey, 16-bit, RGBA and CMYK files are converted. ``max_pixels`` (default :data:`MAX_PIXELS`) bounds width × height,
    checked on the header before decoding. Anything unreadable raises :class:`ImageError` ``"<path>: <cause>"``.
    """
    return load_image(path, max_pixels=max_pixels).image


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def _checked_header(path: Path, data: bytes, limit: int) -> ImageHeader | None:
    """The file's header; a declared size above ``limit`` pixels or a cut-off PNG/JPEG raise :class:`ImageError`."""
    header = read_header(data)
    refusal = too_large(*header.size, limit) if header is not None and header.size else None
    if refusal is not None:
        raise ImageError(f"{path}: {refusal}")
    if header is not None and not header.complete:
        raise ImageError(f"{path}: not a decodable image")
    return header


def _decode(path: Path, data: bytes, flags: int, max_pixels: int | None) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ImageError(f"{path}: not a decodable image")
    refusal = too_large(image.shape[1], image.shape[0], MAX_PIXELS if max_pixels is None else max_pixels)
    if refusal is not None:  # formats whose header gives no size
        raise ImageError(f"{path}: {refusal}")
    return image
