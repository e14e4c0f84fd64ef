"""What a forward graph's ``scores`` are (:mod:`onnxcam.scores` kinds), and which tensor the explainer explains.

Detected where unambiguous, declared (``--scores KIND``) otherwise:

* a trailing ``Softmax``/``LogSoftmax`` (through shape-only ops) → ``logits``: the graph explains the logits before
  it, as pytorch-grad-cam does (a softmax couples every class into each class's gradient; the runtime recomputes the
  probabilities exactly from the logits). Declaring ``probabilities`` (or ``raw``) keeps the normalised output.
* a trailing ``Sigmoid`` → ``sigmoid``: the logits before it are explained (``σ`` is monotonic per class, so the maps
  of a class are the same up to a positive factor); ``probabilities``/``raw`` keep the output as is.
* ``[N, 1]`` (or a dense ``[N, 1, H, W]``) with nothing trailing → ``sigmoid`` (one logit: softmax would give 1).
* anything else → ``logits``; ``--scores probabilities`` / ``raw`` / ``sigmoid`` for other heads.

A declaration that contradicts the graph (``logits`` on a trailing Sigmoid, ``sigmoid`` on a Softmax) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from onnxcam import contract
from onnxcam.scores import KINDS, LOGITS, PROBABILITIES, RAW, SIGMOID

from .errors import ExportError

_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity")
#: Trailing op → the kind whose logits are its input.
_ACTIVATIONS = {"Softmax": LOGITS, "LogSoftmax": LOGITS, "Sigmoid": SIGMOID}


class ScoresKindError(ExportError):
    """The declared scores kind is unknown or contradicts the graph; or the labels do not fit the classes."""


@dataclass(frozen=True)
class ScoresHead:
    """``tensor``: what the explainer graph exposes as ``scores``; ``kind``: what it is; ``skipped``: the trailing
    op left out (``Softmax``, ``LogSoftmax``, ``Sigmoid``) or ``None``."""

    tensor: str
    kind: str
    skipped: str | None = None


def trailing_activation(model: onnx.ModelProto, name: str = contract.SCORES) -> onnx.NodeProto | None:
    """The Softmax/LogSoftmax/Sigmoid node producing ``name`` through shape-only ops and int8
    ``QuantizeLinear → DequantizeLinear`` pairs (``quantize_static`` quantizes a Softmax's or Sigmoid's output too),
    if any."""
    producers = {o: n for n in model.graph.node for o in n.output}
    while (node := producers.get(name)) is not None and (source := _passed(node, producers)) is not None:
        name = source
    return node if node is not None and node.op_type in _ACTIVATIONS else None


def _passed(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The tensor ``node`` passes on unchanged but for shape or int8 rounding: a shape-only op's input, the input of
    the ``QuantizeLinear`` a ``DequantizeLinear`` reads; else ``None``."""
    if node.op_type in _PASS_THROUGH:
        return node.input[0]
    source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
    return source.input[0] if source is not None and source.op_type == "QuantizeLinear" else None


def resolve_head(model: onnx.ModelProto, declared: str | None, classes: int | None = None) -> ScoresHead:
    """The :class:`ScoresHead` of a forward graph whose output is ``scores``; ``declared``: ``--scores`` or ``None``.

    ``classes``: the number of scores per image when known (``1`` → ``sigmoid`` unless declared otherwise).
    """
    if declared is not None and declared not in KINDS:
        raise ScoresKindError(f"--scores {declared}: unknown kind; choose from {', '.join(KINDS)}")
    node = trailing_activation(model)
    if node is None:
        return ScoresHead(contract.SCORES, declared or (SIGMOID if classes == 1 else LOGITS))
    implied = _ACTIVATIONS[node.op_type]
    if declared in (None, implied):
        return ScoresHead(node.input[0], implied, node.op_type)
    if declared == RAW or (declared == PROBABILITIES and node.op_type != "LogSoftmax"):
        return ScoresHead(contract.SCORES, declared)
    keep = "probabilities (keeps the normalised output)" if node.op_type != "LogSoftmax" else "raw"
    raise ScoresKindError(
        f"--scores {declared}: the model's output is a {node.op_type} ('{node.name or node.output[0]}'), whose "
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
