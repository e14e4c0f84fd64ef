"""Image format, size and completeness read from the file's bytes, without decoding a pixel.

Lets :func:`onnxcam.images.read_image` refuse a decompression bomb (a small file declaring a huge image) before the
decoder allocates it, and a cut-off PNG or JPEG that some decoders would silently fill with grey. Formats: PNG, JPEG
(SOF markers), BMP, GIF, WebP (``VP8``/``VP8L``/``VP8X``), TIFF (classic, either byte order) and Netpbm/PFM.
Anything else is not recognised (``None``) and left to the decoder.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0–CF except DHT (C4), JPG (C8) and DAC (CC); they carry the frame's height and width.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers that stand alone (no length field): TEM, RST0–7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
_JPEG_SOS, _JPEG_EOI = 0xDA, b"\xff\xd9"
# Netpbm (P1–P6) and PFM: the magic, then width and height as decimal text, comments allowed in between.
_NETPBM = re.compile(rb"(P[1-6]|PF|Pf)(?:\s|#[^\r\n]*)+(\d+)(?:\s|#[^\r\n]*)+(\d+)\s")
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
# Sizes of the BMP info headers: core (12), OS/2 2.x (16, 64), Windows 3.x to 5 (40, 52, 56, 108, 124).
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes say: ``format`` (``"PNG"``, ``"JPEG"``…), ``size`` ``(width, height)`` when found, and
    ``complete``: ``False`` when a PNG has no ``IEND`` chunk or a JPEG no end-of-image marker after its scan data."""

    format: str
    size: tuple[int, int] | None
    complete: bool = True


def read_header(data: bytes) -> ImageHeader | None:
    """The header of an image file held in ``data``, or ``None`` when the format is not recognised."""
    for signature, name, reader in _READERS:
        if data.startswith(signature):
            try:
                return reader(data)
            except (struct.error, IndexError, ValueError):  # header cut short or broken: size unknown
                return ImageHeader(name, None, complete=False)
    netpbm = _NETPBM.match(data[:4096])
    return ImageHeader("PNM", (int(netpbm[2]), int(netpbm[3]))) if netpbm else None


def _png(data: bytes) -> ImageHeader:
    """IHDR (always the first chunk) holds width and height; chunks are walked to find ``IEND``."""
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return ImageHeader("PNG", (width, height), complete=pos <= len(data))
    return ImageHeader("PNG", (width, height), complete=False)


def _jpeg(data: bytes) -> ImageHeader:
    """Marker segments from SOI to the first scan (SOS): the frame size is in the SOF segment; the file is complete
    when an EOI marker follows the scan (entropy-coded data never holds ``FF D9``)."""
    size, pos = None, 2
    while pos >= 0 and pos + 4 <= len(data):
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker == 0xFF:  # stray bytes or fill bytes before a marker: skip to the next FF
            pos = data.find(b"\xff", pos + 1)
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF and size is None:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height) if height else None  # height 0: defined later by a DNL marker
        if marker == _JPEG_SOS:
            return ImageHeader("JPEG", size, complete=data.find(_JPEG_EOI, pos + 2 + length) >= 0)
        pos += 2 + length
    return ImageHeader("JPEG", size, complete=False)


def _bmp(data: bytes) -> ImageHeader:
    """BITMAPCOREHEADER (12 bytes): 16-bit width and height; later headers: signed 32-bit (negative = top-down)."""
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size not in _BMP_HEADER_SIZES:
        raise ValueError("not a BMP info header")
    width, height = struct.unpack_from("<HH" if header_size == 12 else "<ii", data, 18)
    return ImageHeader("BMP", (abs(width), abs(height)))


def _gif(data: bytes) -> ImageHeader:
    """The logical screen descriptor's width and height (the canvas every frame is drawn on)."""
    return ImageHeader("GIF", struct.unpack_from("<HH", data, 6))


def _webp(data: bytes) -> ImageHeader:
    """The first chunk of the RIFF container: ``VP8X`` canvas (24-bit sizes minus one), ``VP8L`` (14-bit sizes minus
    one after the 0x2F signature) or ``VP8 `` key frame (14-bit sizes after the 9D 01 2A start code)."""
    if data[8:12] != b"WEBP":
        raise ValueError("RIFF file that is not WebP")
    kind, chunk = data[12:16], data[20:30]
    if kind == b"VP8X":
        width, height = int.from_bytes(chunk[4:7], "little") + 1, int.from_bytes(chunk[7:10], "little") + 1
    elif kind == b"VP8L" and chunk[0] == 0x2F:
        (bits,) = struct.unpack_from("<I", chunk, 1)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8 " and chunk[3:6] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", chunk, 6))
    else:
        raise ValueError("unknown WebP chunk")
    return ImageHeader("WEBP", (width, height))


def _tiff(data: bytes) -> ImageHeader:
    """ImageWidth (256) and ImageLength (257) of the first image file directory (the page a decoder reads)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    found: dict[int, int] = {}
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (_TIFF_WIDTH, _TIFF_HEIGHT):
            found[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)[0]
    return ImageHeader("TIFF", (found[_TIFF_WIDTH], found[_TIFF_HEIGHT]) if len(found) == 2 else None)


_READERS = (
    (_PNG_SIGNATURE, "PNG", _png),
    (b"\xff\xd8", "JPEG", _jpeg),
    (b"BM", "BMP", _bmp),
    (b"GIF87a", "GIF", _gif),
    (b"GIF89a", "GIF", _gif),
    (b"RIFF", "WEBP", _webp),
    (b"II*\x00", "TIFF", _tiff),
    (b"MM\x00*", "TIFF", _tiff),
)
