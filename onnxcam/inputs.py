"""Expanding the ``INPUTS...`` of a batch job into image files: files, directories (recursive) and glob patterns.

Nothing here raises for a bad input: a path that does not exist, a directory without images or a pattern that matches
nothing becomes an :class:`InputItem` carrying an ``error``, so the job reports it and goes on.
"""

from __future__ import annotations

import glob
import os
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
