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


def transposed_begins(
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    output_padding: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
    output_shape: Sequence[int] | None,
    sizes: Sequence[int] | None,
) -> list[int]:
    """How many leading positions ``ConvTranspose`` crops off its full output ``s·(in − 1) + op + (k − 1)·d + 1``.

    ``pads`` begins (NOTSET), 0 (VALID), or, for ``output_shape`` (which needs the input ``sizes``) and SAME_*
    (output ``in·s``), the total crop split as onnxruntime and ``onnx.reference`` split it: the odd one at the end for
    SAME_UPPER, at the start otherwise (ONNX ConvTranspose spec).
    """
    spatial = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if output_shape:
        if sizes is None:
            raise ValueError("output_shape needs the input's spatial sizes")
        totals = [
            s * (n - 1) + p + k - o
            for s, n, p, k, o in zip(strides, sizes, output_padding, spans, output_shape[-spatial:], strict=True)
        ]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [p + k - s for s, p, k in zip(strides, output_padding, spans, strict=True)]
    elif auto_pad == "VALID":
        return [0] * spatial
    else:
        return list(pads or [0] * 2 * spatial)[:spatial]
    totals = [max(t, 0) for t in totals]
    return [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]


@rule("ConvTranspose")
def conv_transpose(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Conv(ḡ', W)`` with the same strides, dilations and group, where ``ḡ'`` is ``ḡ`` placed back in the full
    (uncropped) output: ``begins`` zeros before, zeros (or a crop, for ``output_padding`` rows) after, so that the Conv
    yields exactly ``in`` positions. ``W`` [C_in, C_out/g, k…] is already the Conv weight of the adjoint.
    """
    x, weight = ctx.input(0), ctx.input(1)
    kernel = list(ctx.attr("kernel_shape", None) or static_dims(ctx, weight, 2))  # type: ignore[call-overload]
    spatial, ones = len(kernel), [1] * len(kernel)
    strides = list(ctx.attr("strides", ones))  # type: ignore[call-overload]
    dilations = list(ctx.attr("dilations", ones))  # type: ignore[call-overload]
    output_shape = ctx.attr("output_shape", None)
    begins = transposed_begins(
        kernel,
        strides,
        dilations,
        list(ctx.attr("output_padding", [0] * spatial)),  # type: ignore[call-overload]
        ctx.attr("pads", None),  # type: ignore[arg-type]
        str(ctx.attr("auto_pad", "NOTSET")),
        output_shape,  # type: ignore[arg-type]
        static_dims(ctx, x, 2) if output_shape else None,
    )
    # end = s·(in − 1) + (k − 1)·d + 1 − begin − out = s·in + ((k − 1)·d + 1 − s − begin) − out, at run time.
    offsets = [(k - 1) * d + 1 - s - b for k, d, s, b in zip(kernel, dilations, strides, begins, strict=True)]
    full = ctx.emit("Add", ctx.emit("Mul", ctx.emit("Shape", x, start=2), ctx.const(strides)), ctx.const(offsets))
    end = ctx.emit("Sub", full, ctx.emit("Shape", ctx.output(0), start=2))
    pads = ctx.emit("Concat", ctx.const(begins), end, axis=0)
    placed = ctx.emit("Pad", ctx.grad(), pads, "", ctx.const(list(range(2, 2 + spatial))))
    group = int(ctx.attr("group", 1))  # type: ignore[call-overload]
    grad = ctx.emit("Conv", placed, weight, strides=strides, dilations=dilations, group=group)
    return data_grad_only(ctx, grad)
