"""Install footprint: bytes on disk of a set of distributions and everything they require (installed here)."""

from __future__ import annotations

import importlib.metadata as md
import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIME = ("onnxcam",)
TORCH_STACK = ("torch", "torchvision", "grad-cam")


@dataclass(frozen=True)
class Footprint:
    """The requirement closure of ``roots``: size per distribution (MB) and requirements not installed here."""

    roots: tuple[str, ...]
    sizes: dict[str, float]
    missing: tuple[str, ...]

    @property
    def total_mb(self) -> float:
        return sum(self.sizes.values())

    def largest(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.sizes.items(), key=lambda kv: -kv[1])[:n]


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether ``req`` is needed by a distribution installed with ``extras`` on this platform."""
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def editable(dist: md.Distribution) -> bool:
    """An editable install (``pip install -e``): its record lists a finder, not the package's files."""
    info = json.loads(dist.read_text("direct_url.json") or "{}")
    return bool(info.get("dir_info", {}).get("editable"))


def distribution_mb(dist: md.Distribution, sources: Sequence[Path] = ()) -> float:
    """Size of the files the distribution's record lists that exist, plus the ``*.py`` files under ``sources``."""
    files = [dist.locate_file(file) for file in dist.files or []]
    files += [path for folder in sources for path in Path(folder).rglob("*.py")]
    return sum(path.stat().st_size for path in files if path.is_file()) / 2**20


def footprint(roots: Sequence[str], editable_sources: Mapping[str, Sequence[Path]] | None = None) -> Footprint:
    """Walk the requirements of ``roots`` (no optional extras unless a requirement names them) breadth first.

    ``editable_sources``: for a distribution installed editable, the source folders a wheel would ship instead.
    """
    seen: dict[str, set[str]] = {}
    sizes: dict[str, float] = {}
    missing: set[str] = set()
    queue = deque((name, frozenset[str]()) for name in roots)
    while queue:
        name, extras = queue.popleft()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.add(key)
            continue
        sources = (editable_sources or {}).get(key, ()) if editable(dist) else ()
        sizes.setdefault(key, distribution_mb(dist, sources))
        for text in dist.requires or []:
            req = Requirement(text)
            if _applies(req, extras):
                queue.append((req.name, frozenset(req.extras)))
    return Footprint(tuple(roots), sizes, tuple(sorted(missing)))
