"""Verification of an explainer graph exported from PyTorch: its gradients vs ``torch.autograd``."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from onnxcam import contract

from .float64_torch import evaluate_float64_torch
from .torch_capture import forward_with_taps
from .verify import Report, check, measure


def torch_reference(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, target: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores, target used, activations and ``∂ scores[n, t_n] / ∂ A`` from PyTorch autograd, named as the contract."""
    scores, activations = forward_with_taps(model.eval(), layers, x)
    scores = scores.reshape(scores.shape[0], -1)
    used = torch.where(torch.as_tensor(target) < 0, scores.argmax(1), torch.as_tensor(target))
    picked = scores.gather(1, used[:, None]).sum()
    grads = torch.autograd.grad(picked, activations)
    ref = {contract.SCORES: scores.detach().numpy(), contract.TARGET_USED: used.numpy()}
    for layer, a, g in zip(layers, activations, grads, strict=True):
        ref[contract.activation_name(layer)] = a.detach().numpy()
        ref[contract.gradient_name(layer)] = g.numpy()
    return ref


def verify_torch(
    explainer: onnx.ModelProto,
    model: nn.Module,
    layers: Sequence[str],
    input_shape: tuple[int, int, int],
    tolerance: float = 1e-4,
    batch: int = 3,
    seed: int = 0,
) -> Report:
    """The explainer graph in float64 (``onnx.reference``) vs float64 ``torch.autograd`` on a random batch,
    targets ``[-1, 0, K−1]``; raises when an output differs by more than ``tolerance``.

    Float64 on both sides, because float32 gradients of ReLU/max-pool networks jump wherever a value lies within
    rounding of a kink, and onnxruntime and PyTorch may take different sides there (a difference in rounding, not
    in the graph). Expect ~1e-6: the rest is the float32 weights the exporter folded (e.g. BatchNorm into Conv).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator, dtype=torch.float64)
    model64 = copy.deepcopy(model).eval().double()
    with torch.no_grad():
        classes = model64(x[:1]).reshape(1, -1).shape[1]
    target = np.array(([contract.TOP1, 0, classes - 1] * batch)[:batch], np.int64)
    ours = evaluate_float64_torch(explainer, {contract.INPUT: x.numpy(), contract.TARGET: target})
    return check(measure(ours, torch_reference(model64, layers, x, target)), tolerance)
