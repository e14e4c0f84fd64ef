"""Modified ReLU backward rules for attribution by backpropagation (docs/METHODS.md, input-gradient maps).

Not gradients: guided backpropagation (Springenberg et al. 2014) and deconvnet (Zeiler & Fergus 2014) change what a
ReLU passes back. :func:`overrides` gives the rule table entries that replace the ``Relu`` rule for one backward pass
(every ``Relu`` op of the graph; ``Clip`` as ReLU6, ``LeakyRelu`` … keep their true gradient, as in
pytorch-grad-cam's ``GuidedBackpropReLUModel`` and Captum, which swap ``nn.ReLU`` only).
"""

from __future__ import annotations

from .context import VJPContext
from .registry import VJPRule


def _positive(ctx: VJPContext, name: str) -> str:
    return ctx.emit("Greater", name, ctx.const(0.0, like=name))


def guided_relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [x > 0] · [ḡ > 0]`` (``[y > 0]`` for ``[x > 0]``, as the ``Relu`` rule)."""
    keep = ctx.emit("And", _positive(ctx, ctx.output()), _positive(ctx, ctx.grad()))
    return [ctx.emit("Where", keep, ctx.grad(), ctx.const(0.0, like=ctx.input(0)))]


def deconvnet_relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [ḡ > 0]`` (the forward mask is ignored)."""
    return [ctx.emit("Relu", ctx.grad())]


_RELU = {"guided": guided_relu, "deconvnet": deconvnet_relu}


def overrides(rule: str) -> dict[str, VJPRule]:
    """Rule-table entries for the ReLU backward ``rule`` (``standard``: none)."""
    if rule == "standard":
        return {}
    if rule not in _RELU:
        raise ValueError(f"unknown ReLU backward rule {rule!r}; choose from standard, {', '.join(_RELU)}")
    return {"Relu": _RELU[rule]}
