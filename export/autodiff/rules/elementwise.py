"""VJP rules: element-wise activations and arithmetic."""

from __future__ import annotations

from ..context import VJPContext
from ..registry import rule


@rule("Relu")
def relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [x > 0]``."""
    x = ctx.input(0)
    positive = ctx.emit("Greater", x, ctx.const(0.0, like=x))
    return [ctx.emit("Where", positive, ctx.grad(), ctx.const(0.0, like=x))]
