"""Which of a model's outputs holds the scores (``--scores-from``), for PyTorch modules and ONNX files alike.

A model may return several tensors (a tuple, a list, a dict, an output object such as Hugging Face's
``ImageClassifierOutput``, or several ONNX graph outputs). The scores are chosen by name (a dict key, an attribute,
an ONNX output name; nested ones joined by ``.``, e.g. ``heads.0``) or by index in the listed order. Without a choice
the single output shaped ``[N, K]`` or ``[N, K, H, W]`` is taken when there is exactly one; otherwise the export is
refused in one line listing the outputs. A file is never wired to a tensor nobody asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ExportError

Shape = Sequence[int | str | None] | None


class OutputChoiceError(ExportError):
    """The scores cannot be told apart from the model's other outputs, or ``--scores-from`` names none of them."""


def _dims(shape: Shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def looks_like_scores(shape: Shape) -> bool:
    """``[N, K]``, ``[N, K, 1, 1]`` or a dense ``[N, K, H, W]``."""
    return shape is not None and len(shape) in (2, 4)


def choose_output(
    outputs: Sequence[tuple[str, Shape]], scores_from: str | int | None, what: str = "the model returns"
) -> int:
    """Index of the scores among ``outputs`` (``(name, shape)`` in order); ``scores_from`` is a name or an index.

    One output is always the scores. Raises :class:`OutputChoiceError` (one line) when ``scores_from`` names none of
    them, or when it is not given and not exactly one output looks like scores (:func:`looks_like_scores`).
    """
    names = [name for name, _ in outputs]
    listing = ", ".join(f"{name} {_dims(shape)}" for name, shape in outputs)
    if scores_from is not None:
        key = str(scores_from)
        if key in names:
            return names.index(key)
        if key.lstrip("-").isdigit() and -len(outputs) <= int(key) < len(outputs):
            return int(key) % len(outputs)
        raise OutputChoiceError(f"--scores-from {key}: no such output; {what} {len(outputs)}: {listing}")
    if len(outputs) == 1:
        return 0
    candidates = [i for i, (_, shape) in enumerate(outputs) if looks_like_scores(shape)]
    if len(candidates) == 1:
        return candidates[0]
    raise OutputChoiceError(
        f"{what} {len(outputs)} outputs ({listing}) and onnxcam cannot tell which holds the class scores; "
        "choose them with --scores-from NAME or INDEX (Python: scores_from=...), or wrap the model to return one tensor"
    )
