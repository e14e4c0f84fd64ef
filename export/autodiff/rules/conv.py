"""VJP rules: conv ops (gradient w.r.t. the data input only; weights and bias are constants).

The adjoint of any sliding-window sum (Conv, AveragePool) is a ``ConvTranspose`` of the output gradient, laid over the
*padded* input and then cropped to the real input: :func:`window_adjoint` does that with run-time shapes, so inputs
whose last rows/columns no strided window reaches (they get zero gradient) and ``ceil_mode`` overhangs both work.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..context import VJPContext
from ..registry import rule


def data_grad_only(ctx: VJPContext, grad: str) -> list[str | None]:
    """``[x̄, None, …]`` for a node whose inputs after the first are weights that never get a gradient."""
    for i in range(1, len(ctx.inputs)):
        if ctx.needs(i):
            ctx.fail(f"no gradient w.r.t. input {i} ('{ctx.input(i)}'): only the data input is differentiated")
    return [grad] + [None] * (len(ctx.inputs) - 1)


def static_dims(ctx: VJPContext, name: str, start: int) -> list[int]:
    """Dims ``start:`` of ``name``, which must be static (the batch dim before them may be symbolic)."""
    dims = ctx.shape(name)[start:]
    if not all(isinstance(d, int) for d in dims):
        ctx.fail(f"needs static dims {start}: of '{name}', got {ctx.shape(name)}")
    return [int(d) for d in dims]  # type: ignore[arg-type]


def window_pads(
    ctx: VJPContext, x: str, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Begin and end pads of the spatial dims of ``x``, from ``pads`` or ``auto_pad`` (SAME_* needs static dims)."""
    spatial = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = list(ctx.attr("pads", [0] * 2 * spatial))  # type: ignore[call-overload]
        return pads[:spatial], pads[spatial:]
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    sizes = static_dims(ctx, x, 2)
    totals = [
        max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        for n, k, s, d in zip(sizes, kernel, strides, dilations, strict=True)
    ]
    lower = auto_pad == "SAME_LOWER"
    begins = [(t + 1) // 2 if lower else t // 2 for t in totals]
    return begins, [t - b for t, b in zip(totals, begins, strict=True)]


def window_adjoint(
    ctx: VJPContext,
    grad: str,
    weight: str,
    x: str,
    begins: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> str:
    """``x̄ = crop(ConvTranspose(ḡ, W))``: spread over the padded input, then crop ``begins`` and pad/crop the end."""
    spatial = len(begins)
    full = ctx.emit("ConvTranspose", grad, weight, strides=list(strides), dilations=list(dilations), group=group)
    # Pad takes negative pads as crops: begin −p, end = (in + p) − (size of the ConvTranspose output), at run time.
    end = ctx.emit(
        "Sub", ctx.emit("Add", ctx.emit("Shape", x, start=2), ctx.const(list(begins))), ctx.emit("Shape", full, start=2)
    )
    pads = ctx.emit("Concat", ctx.const([-b for b in begins]), end, axis=0)
    return ctx.emit("Pad", full, pads, "", ctx.const(list(range(2, 2 + spatial))))


@rule("Conv")
def conv(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ConvTranspose(ḡ, W)`` cropped to ``x`` (same strides, dilations, group; pads cropped off)."""
    x, weight = ctx.input(0), ctx.input(1)
    kernel = list(ctx.attr("kernel_shape", None) or static_dims(ctx, weight, 2))  # type: ignore[call-overload]
    ones = [1] * len(kernel)
    strides = list(ctx.attr("strides", ones))  # type: ignore[call-overload]
    dilations = list(ctx.attr("dilations", ones))  # type: ignore[call-overload]
    begins, _ = window_pads(ctx, x, kernel, strides, dilations)
    group = int(ctx.attr("group", 1))  # type: ignore[call-overload]
    return data_grad_only(ctx, window_adjoint(ctx, ctx.grad(), weight, x, begins, strides, dilations, group))
