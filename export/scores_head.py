"""What a forward graph's ``scores`` are (:mod:`onnxcam.scores` kinds), and which tensor the explainer explains.

Detected where unambiguous, declared (``--scores KIND``) otherwise:

* a trailing ``Softmax``/``LogSoftmax`` (through the ops that only move or select values, written out as
  ``Exp``/``ReduceSum``/``Div`` or not: :mod:`.score_activation`) → ``logits``: the graph explains the logits before
  it, as pytorch-grad-cam does (a softmax couples every class into each class's gradient; the runtime recomputes the
  probabilities exactly from the logits). Declaring ``probabilities`` (or ``raw``) keeps the normalised output.
* a trailing ``Sigmoid`` → ``sigmoid``: the logits before it are explained (``σ`` is monotonic per class, so the maps
  of a class are the same up to a positive factor); ``probabilities``/``raw`` keep the output as is.
* ``[N, 1]`` (or a dense ``[N, 1, H, W]``) with nothing trailing → ``sigmoid`` (one logit: softmax would give 1).
* anything else → ``logits``; ``--scores probabilities`` / ``raw`` / ``sigmoid`` for other heads.

The moving ops between the activation and the output (``Transpose``, ``Slice``, …) are re-applied to the logits, so
the explained scores are laid out, and indexed, as the model's output. A declaration that contradicts the graph
(``logits`` on a trailing Sigmoid, ``sigmoid`` on a Softmax) is refused; so is an undeclared output the activation
reaches through a value-changing op, or a softmax of which the output keeps some classes only
(:class:`.score_activation.Refusal`), unless declared ``probabilities`` or ``raw``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from onnxcam import contract
from onnxcam.scores import KINDS, LOGITS, PROBABILITIES, RAW, SIGMOID

from .errors import ExportError
from .score_activation import Refusal, find_activation

#: Trailing op → the kind whose logits are its input.
_ACTIVATIONS = {"Softmax": LOGITS, "LogSoftmax": LOGITS, "Sigmoid": SIGMOID}


class ScoresKindError(ExportError):
    """The declared scores kind is unknown or contradicts the graph; or the labels do not fit the classes."""


@dataclass(frozen=True)
class ScoresHead:
    """``tensor``: what the explainer graph exposes as ``scores`` (after ``tail``); ``kind``: what it is;
    ``skipped``: the trailing op left out (``Softmax``, ``LogSoftmax``, ``Sigmoid``) or ``None``; ``form``: how it
    is written when decomposed (``""``: the op); ``tail``: the moving ops to apply to ``tensor``, in order."""

    tensor: str
    kind: str
    skipped: str | None = None
    form: str = ""
    tail: tuple[onnx.NodeProto, ...] = ()


def resolve_head(model: onnx.ModelProto, declared: str | None, classes: int | None = None) -> ScoresHead:
    """The :class:`ScoresHead` of a forward graph whose output is ``scores``; ``declared``: ``--scores`` or ``None``.

    ``classes``: the number of scores per image when known (``1`` → ``sigmoid`` unless declared otherwise).
    """
    if declared is not None and declared not in KINDS:
        raise ScoresKindError(f"--scores {declared}: unknown kind; choose from {', '.join(KINDS)}")
    node = find_activation(model)
    if isinstance(node, Refusal):
        if declared in (PROBABILITIES, RAW):  # the output as it is, whatever produced it
            return ScoresHead(contract.SCORES, declared)
        raise ScoresKindError(
            node.message if declared is None else f"--scores {declared}: {node.message.removeprefix('scores: ')}"
        )
    if node is None:
        return ScoresHead(contract.SCORES, declared or (SIGMOID if classes == 1 else LOGITS))
    implied = _ACTIVATIONS[node.op]
    if declared in (None, implied):
        return ScoresHead(node.logits, implied, node.op, node.form, node.tail)
    if declared == RAW or (declared == PROBABILITIES and node.op != "LogSoftmax"):
        return ScoresHead(contract.SCORES, declared)
    keep = "probabilities (keeps the normalised output)" if node.op != "LogSoftmax" else "raw"
    written = f" (written as {node.form})" if node.form else ""
    raise ScoresKindError(
        f"--scores {declared}: the model's output is a {node.op}{written} ('{node.name}'), whose "
        f"input is {implied}; use --scores {implied} (explains the {implied} before it) or --scores {keep}"
    )


def check_labels(labels: Sequence[str] | None, kind: str, classes: int) -> None:
    """Refuse labels whose count is not the number of classes (a binary sigmoid head takes 1: the positive class,
    or 2: negative, positive)."""
    if not labels:
        return
    allowed = (1, 2) if kind == SIGMOID and classes == 1 else (classes,)
    if len(labels) not in allowed:
        expected = "1 (the positive class) or 2 (negative, positive)" if len(allowed) == 2 else str(classes)
        raise ScoresKindError(
            f"labels: {len(labels)} given, but the model has {classes} class score{'s' * (classes != 1)} "
            f"({kind}); give {expected} labels"
        )
