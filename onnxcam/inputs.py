"""Expanding the ``INPUTS...`` of a batch job into image files: files, directories (recursive) and glob patterns.

Nothing here raises for a bad input: a path that does not exist, a directory without images or a pattern that matches
nothing becomes an :class:`InputItem` carrying an ``error``, so the job reports it and goes on.

Sharding (``--shard I/N``): input ``p`` belongs to shard ``int(sha256(p)[:8 bytes]) mod N``, where ``p`` is the path
as expanded from the command line (as given, not resolved; ``pathlib``-normalised, ``/`` separators). The split does not
depend on the input order, on ``PYTHONHASHSEED`` or on where the data is mounted, so N machines running the same
command with ``I = 0 … N−1`` cover every input exactly once.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_SUFFIXES

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    """One input of the job: an image file to explain, or (``error`` set) a spec that yields no image."""

    path: Path
    error: str | None = None


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (0-based) of ``count`` disjoint parts of the inputs."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` → :class:`Shard`; anything but integers with ``N ≥ 1`` and ``0 ≤ I < N`` raises ``ValueError``."""
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
    if match is None:
        raise ValueError(f"expected I/N (e.g. 0/4), got '{text}'")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ValueError(f"need N ≥ 1 and 0 ≤ I < N, got '{text}'")
    return Shard(index, count)


def shard_of(path: str | Path, count: int) -> int:
    """The shard of ``path`` among ``count``: the first 8 bytes of SHA-256 of its POSIX spelling, modulo ``count``."""
    digest = hashlib.sha256(os.fsencode(Path(path).as_posix())).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(items: Iterable[InputItem], shard: Shard | None) -> list[InputItem]:
    """The items of ``shard``, in their order (all items when ``shard`` is ``None``)."""
    if shard is None:
        return list(items)
    return [item for item in items if shard_of(item.path, shard.count) == shard.index]


def is_image_name(path: Path) -> bool:
    """Whether ``path`` has an image suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_glob(spec: str) -> bool:
    """Whether ``spec`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(c in _GLOB_CHARS for c in spec)


def walk_images(root: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``root``, recursively, sorted; symlinked directories are not followed (no loops).

    Directories in ``exclude`` (resolved paths, e.g. the job's output directory) are not descended into.
    """
    skip = {p.resolve() for p in exclude}
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if (Path(folder) / d).resolve() not in skip]
        found += [Path(folder) / f for f in files if is_image_name(Path(f))]
    return sorted(found)


def expand_spec(spec: str | Path, exclude: Sequence[Path] = ()) -> list[InputItem]:
    """One command-line input → its items: a file as is (any suffix), a directory's images, a pattern's images."""
    path = Path(spec)
    if path.is_file():
        return [InputItem(path)]
    if path.is_dir():
        images = walk_images(path, exclude)
        return [InputItem(p) for p in images] or [InputItem(path, "directory holds no image files")]
    if is_glob(str(spec)):
        return _expand_glob(str(spec), exclude) or [InputItem(path, "pattern matches no image file")]
    if os.path.lexists(path):
        return [InputItem(path, "not a regular file")]
    return [InputItem(path, "no such file or directory")]


def expand_inputs(specs: Iterable[str | Path], exclude: Sequence[Path] = ()) -> list[InputItem]:
    """All items of ``specs``, stably ordered: spec by spec, each spec's files sorted; a file met twice counts once."""
    seen: set[Path] = set()
    items: list[InputItem] = []
    for spec in specs:
        for item in expand_spec(spec, exclude):
            key = item.path.resolve()
            if key in seen:
                continue
            seen.add(key)
            items.append(item)
    return items


def _expand_glob(pattern: str, exclude: Sequence[Path]) -> list[InputItem]:
    """Image files matched by ``pattern`` (``**`` recurses), matched directories walked; sorted."""
    found: set[Path] = set()
    for match in map(Path, glob.glob(pattern, recursive=True)):
        if match.is_dir():
            found.update(walk_images(match, exclude))
        elif match.is_file() and is_image_name(match):
            found.add(match)
    return [InputItem(p) for p in sorted(found)]
