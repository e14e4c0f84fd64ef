"""An independent PyTorch reference for explainer graphs: forward hooks and ``torch.autograd.grad`` on a copy.

In-place flags are switched off; a hook also hands the network a clone of the module output, because some forwards
mutate a module's output functionally afterwards (DenseNet's ``F.relu(features, inplace=True)``), and the contract
explains the module's output as the module returned it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def reference(model: nn.Module, layers: Sequence[str], x: torch.Tensor, target: np.ndarray) -> dict[str, np.ndarray]:
    """Logits, class explained, activations and ``torch.autograd.grad(logit[n, t_n], A)`` per layer."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            seen[name] = out
            return out.clone()

        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        scores = model(x).reshape(x.shape[0], -1)
    finally:
        for h in handles:
            h.remove()
    used = torch.where(torch.as_tensor(target) < 0, scores.argmax(1), torch.as_tensor(target))
    grads = torch.autograd.grad(scores.gather(1, used[:, None]).sum(), [seen[name] for name in layers])
    out = {"scores": scores.detach().numpy(), "target_used": used.numpy()}
    for name, g in zip(layers, grads, strict=True):
        out[f"activation:{name}"] = seen[name].detach().numpy()
        out[f"gradient:{name}"] = g.numpy()
    return out


def _outputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, [output of module name for name in names])`` of one forward pass."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, _i, out, n=n: seen.setdefault(n, out)) for n in names]
    try:
        scores = model(x)
    finally:
        for h in handles:
            h.remove()
    return scores, [seen[n] for n in names]


def bias_of(module: nn.Module) -> torch.Tensor:
    """The per-channel bias a module adds at its output (FullGrad, Srinivas & Fleuret 2019): a convolution's ``bias``,
    an eval-mode batch norm's ``β − γ·μ / √(σ² + ε)``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.bias - module.weight * module.running_mean / torch.sqrt(module.running_var + module.eps)
    return module.bias


def fullgrad_terms(model: nn.Module, x: np.ndarray, seed: np.ndarray, biased: Sequence[str]) -> list[np.ndarray]:
    """``[x ⊙ ∂y/∂x, b_1 ⊙ ∂y/∂z_1, …]`` by ``torch.autograd.grad`` in float64, ``y = Σ seed ⊙ logits``, ``z_k`` the
    output of module ``biased[k]`` and ``b_k`` its :func:`bias_of` (per channel, broadcast over ``[N, K, h, w]``)."""
    model = copy.deepcopy(model).double().eval()
    modules = dict(model.named_modules())
    inputs = torch.from_numpy(x).double().requires_grad_(True)
    scores, z = _outputs(model, biased, inputs)
    grads = torch.autograd.grad((scores * torch.from_numpy(seed).double()).sum(), [inputs, *z])
    terms = [inputs * grads[0]] + [
        bias_of(modules[n])[:, None, None] * g for n, g in zip(biased, grads[1:], strict=True)
    ]
    return [t.detach().numpy() for t in terms]


def hessian_vector_products(
    model: nn.Module, x: np.ndarray, seed: np.ndarray, layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """``H·A = ∂/∂A ⟨∂y/∂A, v⟩|_{v=A}`` per layer output ``A`` (``H = ∂²y/∂A²``) by torch double backward in float64,
    ``y = Σ seed ⊙ logits``."""
    model = copy.deepcopy(model).double().eval()
    scores, acts = _outputs(model, layers, torch.from_numpy(x).double())
    y = (scores * torch.from_numpy(seed).double()).sum()
    out = {}
    for name, a in zip(layers, acts, strict=True):
        (g,) = torch.autograd.grad(y, a, create_graph=True, retain_graph=True)
        (hv,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=True)
        out[name] = hv.numpy()
    return out
