"""What to explain per image: the top-1 class, a class index, a class name from the graph's labels, or a set of them
(``"3,5"``, ``"cat,dog"``: the sum of their scores, explained through the seed)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from .contract import TOP1


@dataclass(frozen=True)
class ClassSet:
    """Several classes explained together: ``y = Σ_{k ∈ classes} scores_k`` (a sum of pytorch-grad-cam's
    ``ClassifierOutputTarget``s), one map."""

    classes: tuple[int, ...]


Target = int | str | ClassSet | None


class TargetError(ValueError):
    """A target that names no class of the model."""


def resolve_target(target: Target, labels: Sequence[str] | None, classes: int) -> int | ClassSet:
    """``None``/``"top1"`` → ``-1`` (top-1); an index (int or digits) → itself; a label → its index; a
    comma-separated list of indices or labels → their :class:`ClassSet`."""
    if isinstance(target, ClassSet):
        return ClassSet(tuple(_one(c, labels, classes) for c in target.classes))
    if isinstance(target, str) and "," in target:
        members = [_one(t.strip(), labels, classes) for t in target.split(",") if t.strip()]
        if TOP1 in members:
            raise TargetError(f"'{target}': a set of classes names classes (indices or labels), not top1")
        return ClassSet(tuple(dict.fromkeys(members)))
    return _one(target, labels, classes)


def _one(target: Target, labels: Sequence[str] | None, classes: int) -> int:
    """One class: ``-1`` for top-1, else its index."""
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
