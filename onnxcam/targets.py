"""What to explain per image: the top-1 class, a class index, or a class name from the graph's labels."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from .contract import TOP1

Target = int | str | None


class TargetError(ValueError):
    """A target that names no class of the model."""


def resolve_target(target: Target, labels: Sequence[str] | None, classes: int) -> int:
    """``None``/``"top1"`` → ``-1`` (top-1); an index (int or digits) → itself; a label → its index."""
    if target is None or (isinstance(target, str) and target.lower() in ("top1", "")):
        return TOP1
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, int):
        if not 0 <= target < classes and target != TOP1:
            raise TargetError(f"class index {target} out of range [0, {classes})")
        return target
    if not labels:
        raise TargetError(f"target '{target}' is a name, but the model carries no labels: give a class index")
    folded = [label.lower() for label in labels]
    if target.lower() in folded:
        return folded.index(target.lower())
    near = difflib.get_close_matches(target.lower(), folded, n=3)
    hint = f"; did you mean {', '.join(repr(labels[folded.index(n)]) for n in near)}?" if near else ""
    raise TargetError(f"no class named '{target}'{hint}")
