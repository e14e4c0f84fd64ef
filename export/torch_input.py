"""PyTorch side of the input description: the channels a module takes, a probe run, channels-last modules."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .inputs import TO_NHWC, InputError


def torch_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the first convolution of ``model`` (module order), or ``None`` without one."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return next((m.in_channels for m in model.modules() if isinstance(m, convs) and m.in_channels > 0), None)


def probe_torch(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Run ``model`` once on zeros ``[1, *input_shape]``; a failure raises :class:`InputError` naming the shape."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the model fails on an input [1, {', '.join(map(str, input_shape))}] (C, H, W): {first}; "
            "set --channels, --input-size or --input-layout"
        ) from None


def channels_first(model: nn.Module, layout: str) -> nn.Module:
    """``model`` taking NCHW input: itself for ``layout == 'NCHW'``; for ``'NHWC'`` a shallow copy (same submodules,
    parameters and names) whose first forward pre-hook permutes NCHW → NHWC, so tracing and verification see an
    NCHW ``input`` (the graph gets a ``Transpose``). ``model`` itself is left as it was."""
    if layout != "NHWC":
        return model
    view = copy.copy(model)
    view._forward_pre_hooks = OrderedDict(model._forward_pre_hooks)
    view.register_forward_pre_hook(lambda _m, args: (args[0].permute(*TO_NHWC), *args[1:]), prepend=True)
    return view
