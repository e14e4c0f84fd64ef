"""Verification of an explainer graph exported from PyTorch: its gradients vs ``torch.autograd``."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from onnxcam import contract

from .torch_capture import forward_with_taps
from .verify import Report, VerificationError, measure, run


def torch_reference(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, target: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores, target used, activations and ``∂ scores[n, t_n] / ∂ A`` from PyTorch autograd, named as the contract."""
    scores, activations = forward_with_taps(model.eval(), layers, x)
    scores = scores.reshape(scores.shape[0], -1).float()
    used = torch.where(torch.as_tensor(target) < 0, scores.argmax(1), torch.as_tensor(target))
    picked = scores.gather(1, used[:, None]).sum()
    grads = torch.autograd.grad(picked, activations)
    ref = {contract.SCORES: scores.detach().numpy(), contract.TARGET_USED: used.numpy()}
    for layer, a, g in zip(layers, activations, grads, strict=True):
        ref[contract.activation_name(layer)] = a.detach().float().numpy()
        ref[contract.gradient_name(layer)] = g.float().numpy()
    return ref


def verify_torch(
    explainer: onnx.ModelProto,
    model: nn.Module,
    layers: Sequence[str],
    input_shape: tuple[int, int, int],
    tolerance: float = 1e-3,
    batch: int = 3,
    seed: int = 0,
) -> Report:
    """Random batch through both graphs, targets ``[-1, 0, K−1]``; raise when any error exceeds ``tolerance``.

    Images off by more than ``tolerance`` are checked again against float64 autograd (see :func:`measure`).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator)
    with torch.no_grad():
        classes = model.eval()(x[:1]).reshape(1, -1).shape[1]
    target = np.array(([contract.TOP1, 0, classes - 1] * batch)[:batch], np.int64)
    ours = run(explainer, {contract.INPUT: x.numpy(), contract.TARGET: target})
    refs = [torch_reference(model, layers, x, target)]
    report = measure(ours, refs)
    if report.worst > tolerance:
        refs.append(torch_reference(copy.deepcopy(model).double(), layers, x.double(), target))
        report = measure(ours, refs)
    if report.worst > tolerance:
        raise VerificationError(f"explainer graph is wrong: {report.summary()} > tolerance {tolerance:.0e}")
    return report
