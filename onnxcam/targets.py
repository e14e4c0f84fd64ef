"""What to explain per image: the top-1 class, a class index, a class name from the graph's labels, or a set of them
(``"3,5"``, ``"cat,dog"``: the sum of their scores, explained through the seed)."""

from __future__ import annotations

import difflib
import re
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
    if target.strip().lower() in folded:
        return folded.index(target.strip().lower())
    found = search_labels(target, labels)
    hint = f"; did you mean {', '.join(f'{i} {labels[i]!r}' for i in found)}?" if found else ""
    raise TargetError(f"no class named '{target}'{hint} (give the full name or the index)")


def search_labels(query: str, labels: Sequence[str], limit: int = 10) -> list[int]:
    """Indices of the labels a person means by ``query``, best first, at most ``limit``.

    Ranking: labels holding more of the words of ``query`` as whole words first (``cat`` → ``tiger cat``,
    ``Persian cat``…; ``golden retriever dog`` → ``golden retriever``), then more of them as substrings
    (``polecat``), each in class order; then close spellings (:func:`difflib.get_close_matches` on whole labels and
    on their words). Case-insensitive; words are split on spaces, commas, ``-``, ``_`` and ``/``.
    """
    words = _words(query)
    if not words:
        return []
    label_words = [set(_words(label)) for label in labels]
    folded = [label.lower() for label in labels]
    hits = [
        (sum(w in lw for w in words), sum(w in text for w in words))
        for lw, text in zip(label_words, folded, strict=True)
    ]
    matched = sorted((i for i, (_, sub) in enumerate(hits) if sub), key=lambda i: (-hits[i][0], -hits[i][1], i))
    tiers: list[list[int]] = [matched]
    vocabulary = sorted({w for lw in label_words for w in lw})
    near_words = {n for w in words for n in difflib.get_close_matches(w, vocabulary, n=5, cutoff=0.75)}
    near_labels = difflib.get_close_matches(" ".join(words), folded, n=limit, cutoff=0.6)
    tiers.append([folded.index(n) for n in near_labels])
    tiers.append([i for i, lw in enumerate(label_words) if lw & near_words])
    ranked = list(dict.fromkeys(i for tier in tiers for i in tier))
    return ranked[:limit]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,_\-/]+", text.lower()) if w]
