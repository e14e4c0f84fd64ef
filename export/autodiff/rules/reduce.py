"""VJP rules: ``Reduce*`` ops (opset 18: the axes are input 1) and the running sum ``CumSum``.

Each rule first restores the reduced axes of ``ḡ`` (and of ``y`` where needed) as size-1 dims, written ``ḡₖ``/``yₖ``
below, then broadcasts against ``x``. With ``noop_with_empty_axes`` and no axes nothing is reduced and the op is
element-wise (``ReduceL2`` → ``|x|``, …), which the same formulas cover.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..context import VJPContext
from ..registry import rule


def _axes(ctx: VJPContext) -> list[int]:
    """The reduced axes, non-negative and sorted; ``[]`` when nothing is reduced."""
    rank = ctx.rank(ctx.input(0))
    axes = ctx.constant(1) if ctx.input(1) else None
    if axes is None or axes.size == 0:
        return [] if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({int(a) % rank for a in axes.ravel()})


def _kept(ctx: VJPContext, name: str, axes: list[int]) -> str:
    """``name`` (shaped like the output) with the reduced ``axes`` as size-1 dims, as with ``keepdims=1``."""
    if ctx.attr("keepdims", 1) or not axes:
        return name
    return ctx.emit("Unsqueeze", name, ctx.const(axes))


def _spread(ctx: VJPContext, grad: str) -> list[str | None]:
    """``grad`` (shaped like the kept output) broadcast to ``x``'s shape."""
    return [ctx.emit("Expand", grad, ctx.shape_of(ctx.input(0))), None]


def _count(ctx: VJPContext, axes: list[int]) -> str:
    """How many elements of ``x`` each output element summarizes, as a float (from static dims if known)."""
    x = ctx.input(0)
    dims = [ctx.shape(x)[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return ctx.const(float(math.prod(dims)), like=x)  # type: ignore[arg-type]
    ratio = ctx.emit("Div", ctx.emit("Size", x), ctx.emit("Size", ctx.output(0)))
    return ctx.emit("Cast", ratio, to=_onnx_type(ctx, x))


def _onnx_type(ctx: VJPContext, name: str) -> int:
    """The ONNX element type of ``name`` (for ``Cast``)."""
    return helper.np_dtype_to_tensor_dtype(ctx.dtype(name))


@rule("ReduceSum")
def reduce_sum(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ`` broadcast over the reduced axes."""
    return _spread(ctx, _kept(ctx, ctx.grad(), _axes(ctx)))


@rule("ReduceMean")
def reduce_mean(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ / n`` broadcast over the reduced axes (``n`` elements per mean)."""
    axes = _axes(ctx)
    return _spread(ctx, ctx.emit("Div", _kept(ctx, ctx.grad(), axes), _count(ctx, axes)))


@rule("ReduceMax", "ReduceMin")
def reduce_extremum(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ · [x = yₖ] / #{x = yₖ}``: ties share the gradient equally (as ``torch.amax``/``amin``)."""
    x, axes = ctx.input(0), _axes(ctx)
    hit = ctx.emit("Cast", ctx.emit("Equal", x, _kept(ctx, ctx.output(0), axes)), to=_onnx_type(ctx, x))
    ties = ctx.emit("ReduceSum", hit, ctx.const(np.array(axes, dtype=np.int64)), keepdims=1, noop_with_empty_axes=1)
    return [ctx.emit("Mul", hit, ctx.emit("Div", _kept(ctx, ctx.grad(), axes), ties)), None]


@rule("ReduceSumSquare")
def reduce_sum_square(ctx: VJPContext) -> list[str | None]:
    """``x̄ = 2x · ḡₖ``."""
    x = ctx.input(0)
    twice = ctx.emit("Mul", _kept(ctx, ctx.grad(), _axes(ctx)), ctx.const(2.0, like=x))
    return [ctx.emit("Mul", x, twice), None]


@rule("ReduceL2")
def reduce_l2(ctx: VJPContext) -> list[str | None]:
    """``x̄ = x · ḡₖ / yₖ`` (``0`` where ``yₖ = 0``, i.e. ``x = 0``: the subgradient torch uses)."""
    x, axes = ctx.input(0), _axes(ctx)
    norm = ctx.emit("Max", _kept(ctx, ctx.output(0), axes), ctx.const(np.finfo(ctx.dtype(x)).tiny, like=x))
    return [ctx.emit("Mul", x, ctx.emit("Div", _kept(ctx, ctx.grad(), axes), norm)), None]


@rule("ReduceL1")
def reduce_l1(ctx: VJPContext) -> list[str | None]:
    """``x̄ = sign(x) · ḡₖ``."""
    x = ctx.input(0)
    return [ctx.emit("Mul", ctx.emit("Sign", x), _kept(ctx, ctx.grad(), _axes(ctx))), None]


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ · exp(x − yₖ)`` (the softmax over the reduced axes)."""
    x, axes = ctx.input(0), _axes(ctx)
    softmax = ctx.emit("Exp", ctx.emit("Sub", x, _kept(ctx, ctx.output(0), axes)))
    return [ctx.emit("Mul", softmax, _kept(ctx, ctx.grad(), axes)), None]


@rule("ReduceLogSum")
def reduce_log_sum(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ / exp(yₖ)`` (``exp(yₖ)`` is the sum) broadcast over the reduced axes."""
    axes = _axes(ctx)
    total = ctx.emit("Exp", _kept(ctx, ctx.output(0), axes))
    return _spread(ctx, ctx.emit("Div", _kept(ctx, ctx.grad(), axes), total))


@rule("ReduceProd")
def reduce_prod(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡₖ · Π_{j≠i} xⱼ``, exact with zeros: with ``P`` the product of the non-zero entries and ``z`` the count
    of zeros, ``Π_{j≠i} xⱼ = P/xᵢ`` if ``z = 0``; ``P`` at the zero and 0 elsewhere if ``z = 1``; 0 if ``z ≥ 2``."""
    x, axes = ctx.input(0), _axes(ctx)
    zero, one = ctx.const(0.0, like=x), ctx.const(1.0, like=x)
    is_zero = ctx.emit("Equal", x, zero)
    nonzero = ctx.emit("Where", is_zero, one, x)
    axes_const = ctx.const(np.array(axes, dtype=np.int64))
    product = ctx.emit("ReduceProd", nonzero, axes_const, keepdims=1, noop_with_empty_axes=1)
    zeros = ctx.emit(
        "ReduceSum", ctx.emit("Cast", is_zero, to=_onnx_type(ctx, x)), axes_const, keepdims=1, noop_with_empty_axes=1
    )
    at_zero = ctx.emit("Where", ctx.emit("Equal", zeros, one), product, zero)
    elsewhere = ctx.emit("Where", ctx.emit("Equal", zeros, zero), ctx.emit("Div", product, nonzero), zero)
    others = ctx.emit("Where", is_zero, at_zero, elsewhere)
    return [ctx.emit("Mul", others, _kept(ctx, ctx.grad(), axes)), None]


@rule("CumSum")
def cum_sum(ctx: VJPContext) -> list[str | None]:
    """``x̄ = CumSum(ḡ)`` along the same axis in the other direction (``exclusive`` kept): ``x̄ᵢ = Σ_{j ≥ i} ḡⱼ`` for
    the inclusive forward sum ``yⱼ = Σ_{i ≤ j} xᵢ``, ``Σ_{j > i}`` for the exclusive one."""
    reverse = 1 - int(ctx.attr("reverse", 0))  # type: ignore[call-overload]
    exclusive = int(ctx.attr("exclusive", 0))  # type: ignore[call-overload]
    return [ctx.emit("CumSum", ctx.grad(), ctx.input(1), exclusive=exclusive, reverse=reverse), None]
