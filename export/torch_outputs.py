"""The scores among a PyTorch model's outputs, and the logits before a trailing softmax/sigmoid (for verification).

``flatten`` lists the tensors a ``forward`` returns — a tensor, a tuple/list, a dict (Hugging Face ``ModelOutput`` is
one), a named tuple, a dataclass or any object holding tensors as attributes — by name (index, key or attribute;
nested ones joined by ``.``). :func:`scores_name` picks the scores among them (:mod:`.scores_from`).

When export skips a trailing Softmax/LogSoftmax/Sigmoid of the graph (the graph's ``scores`` are the logits before
it, :mod:`.scores_head`), the PyTorch reference must be those logits too: :class:`PreActivation` makes the last such
call return its input during a forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .errors import ExportError
from .scores_from import choose_output

#: Name of the scores when ``forward`` returns one tensor.
SINGLE = "output"


def flatten(output: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model output with their names, in order; non-tensor leaves (``None``, numbers) are left out."""
    if isinstance(output, torch.Tensor):
        return [(prefix or SINGLE, output)]
    if isinstance(output, dict):
        items = [(str(k), v) for k, v in output.items()]
    elif isinstance(output, tuple) and hasattr(output, "_fields"):
        items = list(zip(output._fields, output, strict=True))
    elif isinstance(output, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(output)]
    elif dataclasses.is_dataclass(output):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    elif hasattr(output, "__dict__"):
        items = list(vars(output).items())
    else:
        return []
    return [pair for key, value in items for pair in flatten(value, f"{prefix}.{key}" if prefix else key)]


def pick(output: Any, name: str | None) -> torch.Tensor:
    """The tensor called ``name`` in ``output`` (``None``: ``output`` is the tensor)."""
    if name is None:
        return output
    return dict(flatten(output))[name]


def scores_name(output: Any, scores_from: str | int | None) -> str | None:
    """The name of the scores in a model output (``None`` when the model returns a plain tensor and nothing is
    asked); :class:`~.scores_from.OutputChoiceError` when ambiguous or not found."""
    if isinstance(output, torch.Tensor) and scores_from is None:
        return None
    tensors = flatten(output)
    if not tensors:
        raise ExportError(f"the model returns {type(output).__name__}, which holds no tensor")
    what = f"the model returns a {type(output).__name__} of"
    index = choose_output([(name, tuple(t.shape)) for name, t in tensors], scores_from, what)
    return tensors[index][0]


def model_scores_name(
    model: torch.nn.Module, input_shape: tuple[int, ...], scores_from: str | int | None
) -> str | None:
    """:func:`scores_name` of ``model``'s output for one blank input of ``input_shape`` ``(C, H, W)``."""
    with torch.no_grad():
        return scores_name(model.eval()(torch.zeros(1, *input_shape)), scores_from)


def dense_classes(model: torch.nn.Module, input_shape: tuple[int, ...], scores_from: str | None) -> int | None:
    """``K`` when ``model``'s scores (its output, or the one named ``scores_from``) are dense ``[N, K, H, W]``
    (segmentation, ``H·W > 1``), else ``None``; from one blank input of ``input_shape`` ``(C, H, W)``."""
    with torch.no_grad():
        scores = pick(model.eval()(torch.zeros(1, *input_shape)), scores_from)
    return int(scores.shape[1]) if scores.dim() == 4 and scores.shape[2] * scores.shape[3] > 1 else None


_CALLS: dict[Callable[..., Any], str] = {
    F.softmax: "Softmax",
    torch.softmax: "Softmax",
    torch.Tensor.softmax: "Softmax",
    F.log_softmax: "LogSoftmax",
    torch.log_softmax: "LogSoftmax",
    torch.Tensor.log_softmax: "LogSoftmax",
    torch.sigmoid: "Sigmoid",
    torch.Tensor.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid",
    torch.special.expit: "Sigmoid",
    torch.special.softmax: "Softmax",
    torch.special.log_softmax: "LogSoftmax",
}


class PreActivation(TorchFunctionMode):
    """Counts the ``op`` calls (ONNX name: ``Softmax``, ``LogSoftmax``, ``Sigmoid``) of a forward pass; the one
    numbered ``skip`` returns its input, so that the forward's output is the ops after it applied to its logits (as
    :mod:`.scores_head` re-applies the moving ops after a skipped activation)."""

    def __init__(self, op: str, skip: int | None = None) -> None:
        super().__init__()
        self.op, self.skip, self.calls = op, skip, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if _CALLS.get(func) == self.op:
            self.calls += 1
            if self.calls - 1 == self.skip:
                return args[0]
        return func(*args, **(kwargs or {}))


def last_call(run: Callable[[], Any], op: str) -> int:
    """The number of the last ``op`` call (:class:`PreActivation`) of ``run()``; :class:`ExportError` when none."""
    with torch.no_grad(), PreActivation(op) as counted:
        run()
    if not counted.calls:
        raise ExportError(
            f"the ONNX graph ends in a {op}, but the PyTorch model makes no {op} call: the reference cannot take its "
            "logits; declare --scores probabilities"
        )
    return counted.calls - 1
