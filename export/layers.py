"""Choosing and naming the layers to explain."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from .errors import ExportError


class LayerError(ExportError):
    """An asked-for layer does not exist (or cannot be tapped); lists the nearest valid names."""

    def __init__(self, layer: str, candidates: Sequence[str], message: str | None = None) -> None:
        self.layer = layer
        self.candidates = list(candidates)
        hint = f"; nearest: {', '.join(self.candidates)}" if self.candidates else ""
        super().__init__(message or f"unknown layer '{layer}'{hint}")


def nearest_names(name: str, names: Sequence[str], n: int = 5) -> list[str]:
    """The ``n`` names closest to ``name`` (difflib ratio), for error messages."""
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.0)
    return close
