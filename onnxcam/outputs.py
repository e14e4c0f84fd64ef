"""Safe artefact names and atomic writes for the batch job and the picture commands (images, ``.npy``, JSON lines).

Names: an input's stem folded to ``[A-Za-z0-9._-]`` plus a short hash of its full resolved path, so files called
alike in different folders never collide and no input name (``../x``, absolute paths, unicode, 300 characters) can
place a file outside the output directory. Writes: a temporary file ``.<name>.<8 hex>.tmp`` in the destination's
directory, then ``os.replace`` — a reader never sees half a file. An exception removes the temporary file; a job killed
outright (SIGKILL, power loss) may leave one, which :func:`remove_stale_temps` deletes when the job is resumed.

The JSON-lines log (:class:`JsonLinesLog`) is only ever reset by a whole-file atomic write and otherwise appended to,
one whole line per record; a line cut short by a kill does not parse and :func:`read_json_lines` reports it as ``None``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

MAX_STEM = 64
DIGEST_CHARS = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def safe_stem(path: str | Path) -> str:
    """``path``'s stem as ASCII ``[A-Za-z0-9._-]`` (accents folded, runs of other characters → ``_``), ≤ 64 chars.

    Leading/trailing ``.``, ``_`` and ``-`` are stripped (no hidden files, no ``..``); an empty result is ``image``.
    """
    folded = unicodedata.normalize("NFKD", Path(path).stem).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("_", folded).strip("._-")[:MAX_STEM].strip("._-") or "image"


def path_digest(path: str | Path) -> str:
    """Short hex hash of ``path``'s full resolved path (stable across runs and working directories)."""
    return hashlib.sha256(os.fsencode(Path(path).resolve())).hexdigest()[:DIGEST_CHARS]


def artefact_stem(path: str | Path) -> str:
    """``<safe stem>-<digest>``: the common prefix of every artefact of one input."""
    return f"{safe_stem(path)}-{path_digest(path)}"


def inside(out_dir: Path, filename: str) -> Path:
    """``out_dir / filename``, refusing any ``filename`` that is not one plain name (a separator, ``..``, empty)."""
    if not filename or filename in (".", "..") or Path(filename).name != filename:
        raise ValueError(f"unsafe artefact name {filename!r}")
    return out_dir / filename


def temp_path(path: Path) -> Path:
    """A fresh temporary name for ``path`` in its directory: ``.<name>.<8 random hex>.tmp`` (hidden)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def remove_stale_temps(directory: Path, names: Collection[str]) -> None:
    """Delete the temporary files :func:`temp_path` made for any of ``names`` in ``directory``.

    Only files of ``names`` are touched, so jobs writing other files into the same directory are left alone.
    """
    for entry in os.scandir(directory):
        match = _TEMP.fullmatch(entry.name)
        if match and match["name"] in names and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    The temporary file is created with mode ``0o666`` minus the umask (what a plain ``open`` gives) and removed on
    any failure, interruption included.
    """
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def image_bytes(pixels: np.ndarray, suffix: str = ".png") -> bytes:
    """Encode a uint8 RGB ``[H, W, 3]`` or grey ``[H, W]`` image in the format ``suffix`` names (``.png``, ``.jpg``,
    any OpenCV writes)."""
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(pixels if pixels.ndim == 2 else pixels[..., ::-1]))
    if not ok:
        raise OSError(f"{suffix} encoding failed for an image of shape {pixels.shape}")
    return buf.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in NumPy's ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_image(path: Path, pixels: np.ndarray) -> None:
    """Atomically write a uint8 RGB or grey image in the format of ``path``'s suffix (:func:`image_bytes`)."""
    atomic_write(path, image_bytes(pixels, path.suffix))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Atomically write ``array`` as ``.npy``."""
    atomic_write(path, npy_bytes(array))


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON (ASCII; NaN and infinities become ``null``)."""
    return json.dumps(_finite(record), allow_nan=False) + "\n"


def read_json_lines(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """Each line of ``path`` with its parsed object (``None`` for a line that is not a JSON object, e.g. cut short).

    A missing file has no lines.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [(line, _parse(line)) for line in text.splitlines() if line.strip()]


class JsonLinesLog:
    """An append-only JSON-lines file: one ``write`` of one whole line per record, flushed at once.

    Kill-safe: the reset is an atomic whole-file replace (the old file stays intact until the new one is complete), and
    a kill while appending cuts at most the last line, which readers ignore and the next reset drops.
    """

    def __init__(self, path: Path, keep: Sequence[str]) -> None:
        """Atomically reset ``path`` to the lines ``keep``, then open it for appending."""
        self.path = path
        atomic_write(path, "".join(line + "\n" for line in keep).encode("utf-8"))
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and hand it to the OS (it survives a kill of this process)."""
        self._file.write(json_line(record))
        self._file.flush()

    def sync(self) -> None:
        """Flush the lines appended so far and ``fsync`` them to the disk."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLinesLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recursively through dicts and lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
