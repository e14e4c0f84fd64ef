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
