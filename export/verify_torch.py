"""Verification of an explainer graph exported from PyTorch: its gradients vs ``torch.autograd``."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from onnxcam import contract

from .float64_torch import evaluate_float64_torch
from .layouts import to_nchw_torch
from .torch_capture import forward_with_taps
from .torch_outputs import PreActivation, pick
from .verify import Report, check, measure


class _ReluBackward(torch.autograd.Function):
    """``relu`` whose backward follows a modified rule: guided ``ḡ·[x>0]·[ḡ>0]`` or deconvnet ``ḡ·[ḡ>0]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        keep = grad > 0
        if ctx.guided:
            keep = keep & (x > 0)
        return grad * keep, None


class _ReluRule(TorchFunctionMode):
    """Every ``relu`` call (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not) with a modified backward."""

    _RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.guided = rule == "guided"

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self._RELUS:
            return _ReluBackward.apply(args[0], self.guided)
        return func(*args, **(kwargs or {}))


def _objective(scores: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_n scores[n, c_n]`` (summed over positions for a dense output) and the classes ``c`` used."""
    dense = scores.dim() == 4 and scores.shape[2:] != (1, 1)
    scores = scores if dense else scores.reshape(scores.shape[0], -1)
    per_class = scores.sum((2, 3)) if dense else scores
    used = torch.where(torch.as_tensor(target) < 0, per_class.argmax(1), torch.as_tensor(target))
    return per_class.gather(1, used[:, None]).sum(), used


def torch_reference(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    target: np.ndarray,
    rules: Sequence[str] = (),
    scores_from: str | None = None,
    skipped: str | None = None,
    layouts: Mapping[str, contract.Layout] | None = None,
) -> dict[str, np.ndarray]:
    """Scores, target used, activations, ``∂ y / ∂ A`` and the input gradients (one per ReLU backward rule in
    ``rules``) from PyTorch autograd, named as the contract; ``y = Σ_n scores[n, c_n]``.

    ``scores_from``: the scores' name among the model's outputs; ``skipped``: the trailing op (``Softmax``,
    ``LogSoftmax``, ``Sigmoid``) the graph left out, whose input is then the scores (:mod:`.scores_head`).
    ``A`` and ``∂ y / ∂ A`` of a layer with a non-NCHW ``layouts`` entry are laid out as ``[N, C, h, w]`` after
    autograd."""
    x = x.detach().requires_grad_(bool(rules))
    with PreActivation() as trailing:
        scores, activations = forward_with_taps(model.eval(), layers, x, scores_from)
    scores = trailing.logits(scores, skipped) if skipped else scores
    picked, used = _objective(scores, target)
    grads = torch.autograd.grad(picked, [*activations, x] if "standard" in rules else activations)
    ref = {
        contract.SCORES: scores.detach().reshape(len(x), *_score_dims(scores)).numpy(),
        contract.TARGET_USED: used.numpy(),
    }
    for layer, a, g in zip(layers, activations, grads[: len(layers)], strict=True):
        layout = (layouts or {}).get(layer, contract.Layout())
        ref[contract.activation_name(layer)] = to_nchw_torch(a.detach(), layout).numpy()
        ref[contract.gradient_name(layer)] = to_nchw_torch(g, layout).numpy()
    if "standard" in rules:
        ref[contract.input_gradient_name("standard")] = grads[-1].numpy()
    for rule in rules:
        if rule != "standard":
            with _ReluRule(rule), PreActivation() as trailing:
                out = pick(model(x), scores_from)
            modified, _ = _objective(trailing.logits(out, skipped) if skipped else out, target)
            ref[contract.input_gradient_name(rule)] = torch.autograd.grad(modified, x)[0].numpy()
    return ref


def _score_dims(scores: torch.Tensor) -> tuple[int, ...]:
    """``S`` of the contract: ``(K,)``, or ``(K, H, W)`` for a dense output."""
    return tuple(scores.shape[1:]) if scores.dim() == 4 and scores.shape[2:] != (1, 1) else (scores[0].numel(),)


def verify_torch(
    explainer: onnx.ModelProto,
    model: nn.Module,
    layers: Sequence[str],
    input_shape: tuple[int, int, int],
    rules: Sequence[str] = (),
    tolerance: float = 1e-4,
    batch: int = 3,
    seed: int = 0,
    scores_from: str | None = None,
    skipped: str | None = None,
    layouts: Mapping[str, contract.Layout] | None = None,
) -> Report:
    """The explainer graph in float64 (``onnx.reference``) vs float64 ``torch.autograd`` on a random batch,
    targets ``[-1, 0, K−1]``; raises when an output differs by more than ``tolerance``. ``rules``: the input
    gradients the graph has (compared too). ``scores_from``, ``skipped``: as :func:`torch_reference`.

    Float64 on both sides, because float32 gradients of ReLU/max-pool networks jump wherever a value lies within
    rounding of a kink, and onnxruntime and PyTorch may take different sides there (a difference in rounding, not
    in the graph). Expect ~1e-6: the rest is the float32 weights the exporter folded (e.g. BatchNorm into Conv).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator, dtype=torch.float64)
    model64 = copy.deepcopy(model).eval().double()
    with torch.no_grad():
        classes = pick(model64(x[:1]), scores_from).shape[1]
    target = np.array(([contract.TOP1, 0, classes - 1] * batch)[:batch], np.int64)
    ours = evaluate_float64_torch(explainer, {contract.INPUT: x.numpy(), contract.TARGET: target})
    reference = torch_reference(model64, layers, x, target, rules, scores_from, skipped, layouts)
    return check(measure(ours, reference), tolerance)
