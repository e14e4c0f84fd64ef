"""VJP rules: pooling ops.

Max pools route ``ḡ`` to each window's first maximum (row-major scan order), as both onnxruntime and torch pick it;
average pools are linear and use the adjoint window sum of :mod:`.conv` with onnxruntime's per-window divisors.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..context import VJPContext
from ..registry import rule
from .conv import static_dims, window_adjoint, window_pads


def _route(ctx: VJPContext, indices: str, layout: list[int], axis: int) -> str:
    """``x̄ = ScatterAdd(0, indices, ḡ)`` along ``axis`` with ``x``, ``indices`` and ``ḡ`` reshaped to ``layout``."""
    x = ctx.input(0)
    shape = ctx.const(layout)
    zeros, index, grad = (ctx.emit("Reshape", t, shape) for t in (ctx.zeros_like(x), indices, ctx.grad()))
    routed = ctx.scatter_add("ScatterElements", zeros, index, grad, axis=axis)
    return ctx.emit("Reshape", routed, ctx.shape_of(x))


@rule("MaxPool")
def max_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Σ_windows ḡ · [x is the window's first argmax]`` (indices from a twin MaxPool, scatter-added)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute} | {"storage_order": 0}
    _, indices = ctx.emit_multi("MaxPool", [ctx.input(0)], 2, **attrs)  # flat indices over the whole tensor
    return [_route(ctx, indices, [-1], 0)]


@rule("GlobalMaxPool")
def global_max_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [x is the first maximum of its (n, c) map]``."""
    spatial = ctx.emit("Reshape", ctx.input(0), ctx.const([0, 0, -1]))
    return [_route(ctx, ctx.emit("ArgMax", spatial, axis=2, keepdims=1), [0, 0, -1], 2)]


@rule("GlobalAveragePool")
def global_average_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ / (H·W·…)`` broadcast over the spatial dims."""
    x = ctx.input(0)
    count = ctx.emit("ReduceProd", ctx.emit("Shape", x, start=2), keepdims=0)
    count = ctx.emit("Cast", count, to=helper.np_dtype_to_tensor_dtype(ctx.dtype(x)))
    return [ctx.emit("Div", ctx.emit("Expand", ctx.grad(), ctx.shape_of(x)), count)]


def _divisors(*dims: int, incl: bool, ceil: bool) -> np.ndarray:
    """Per-window divisor along one dim: the taps inside the input (or inside input + pads when ``incl``).

    ``dims`` = (input size, kernel, stride, dilation, begin pad, end pad). The window count follows onnxruntime and
    torch: with ``ceil_mode`` a last window that would start in the end pad is dropped (ONNX shape inference keeps it).
    """
    size, kernel, stride, dilation, begin, end = dims
    span = size + begin + end - (kernel - 1) * dilation - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1
    taps = (np.arange(out) * stride - begin)[:, None] + np.arange(kernel) * dilation
    inside = taps < size + end if incl else (taps >= 0) & (taps < size)
    return inside.sum(axis=1)


def _window(ctx: VJPContext) -> tuple[list[int], list[int], list[int]]:
    """A pooling node's ``kernel_shape``, ``strides`` and ``dilations`` (1 by default)."""
    kernel = list(ctx.attr("kernel_shape"))  # type: ignore[call-overload]
    ones = [1] * len(kernel)
    strides = list(ctx.attr("strides", ones))  # type: ignore[call-overload]
    dilations = list(ctx.attr("dilations", ones))  # type: ignore[call-overload]
    return kernel, strides, dilations


@rule("AveragePool")
def average_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ConvTranspose(ḡ / D, 1)`` cropped to ``x``, ``D`` the window's divisor (depends on count_include_pad)."""
    x = ctx.input(0)
    kernel, strides, dilations = _window(ctx)
    begins, ends = window_pads(ctx, x, kernel, strides, dilations)
    channels, *sizes = static_dims(ctx, x, 1)
    incl, ceil = bool(ctx.attr("count_include_pad", 0)), bool(ctx.attr("ceil_mode", 0))
    divisor = np.ones([1, 1], dtype=np.int64)
    for dims in zip(sizes, kernel, strides, dilations, begins, ends, strict=True):
        divisor = np.multiply.outer(divisor, _divisors(*dims, incl=incl, ceil=ceil))
    scaled = ctx.emit("Mul", ctx.grad(), ctx.const(1.0 / divisor, like=x))
    spread = ctx.const(np.ones([channels, 1, *kernel]), like=x)
    return [window_adjoint(ctx, scaled, spread, x, begins, strides, dilations, channels)]


def _lp_adjoint(ctx: VJPContext, spread: str) -> str:
    """``sign(x)·|x|^(p−1) · spread``: ``∂y/∂xᵢ = sign(xᵢ)|xᵢ|^(p−1) · y^(1−p)``, ``y^(1−p)`` being in ``spread``."""
    x = ctx.input(0)
    p = float(ctx.attr("p", 2))  # type: ignore[arg-type]
    power = ctx.emit("Pow", ctx.emit("Abs", x), ctx.const(p - 1.0, like=x))
    return ctx.emit("Mul", ctx.emit("Mul", ctx.emit("Sign", x), power), spread)


def _scaled_by_norm(ctx: VJPContext) -> str:
    """``ḡ · y^(1−p)`` (0 where the window is all zeros, ``y = 0``: torch's subgradient)."""
    y, x = ctx.output(0), ctx.input(0)
    p = float(ctx.attr("p", 2))  # type: ignore[arg-type]
    zero = ctx.const(0.0, like=x)
    is_zero = ctx.emit("Equal", y, zero)
    safe = ctx.emit("Where", is_zero, ctx.const(1.0, like=x), y)
    inverse = ctx.emit("Where", is_zero, zero, ctx.emit("Pow", safe, ctx.const(1.0 - p, like=x)))
    return ctx.emit("Mul", ctx.grad(), inverse)


@rule("LpPool")
def lp_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = sign(x)|x|^(p−1) · ConvTranspose(ḡ · y^(1−p), 1)`` cropped to ``x``, for ``y = (Σ_window |x|^p)^(1/p)``."""
    x = ctx.input(0)
    kernel, strides, dilations = _window(ctx)
    begins, _ = window_pads(ctx, x, kernel, strides, dilations)
    channels = static_dims(ctx, x, 1)[0]
    spread = ctx.const(np.ones([channels, 1, *kernel]), like=x)
    window = window_adjoint(ctx, _scaled_by_norm(ctx), spread, x, begins, strides, dilations, channels)
    return [_lp_adjoint(ctx, window)]


@rule("GlobalLpPool")
def global_lp_pool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = sign(x)|x|^(p−1) · ḡ · y^(1−p)`` broadcast over the spatial dims."""
    return [_lp_adjoint(ctx, _scaled_by_norm(ctx))]


@rule("MaxUnpool")
def max_unpool(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ_flat[I]``: each value was written at its flat index ``I`` (over the whole output, as ``MaxPool``'s
    ``Indices``), so its gradient is read back from there; the indices and ``output_shape`` get none."""
    flat = ctx.emit("Reshape", ctx.grad(), ctx.const([-1]))
    return [ctx.emit("Gather", flat, ctx.input(1)), *[None] * (len(ctx.inputs) - 1)]
