"""VJP rules: ops that read or write elements at positions given by an index tensor.

The adjoint of a gather is a scatter-add of ``ḡ`` into zeros at the same indices (repeated indices add up), and the
adjoint of a scatter is a gather of ``ḡ``; the integer indices get no gradient. ``Scatter*`` with ``reduction='none'``
assumes distinct indices, as the ONNX spec requires for a defined result.
"""

from __future__ import annotations

from ..context import VJPContext
from ..registry import rule


@rule("GatherElements")
def gather_elements(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ScatterElements(0, indices, ḡ, axis, reduction='add')``."""
    axis = int(ctx.attr("axis", 0))  # type: ignore[call-overload]
    zeros = ctx.zeros_like(ctx.input(0))
    return [ctx.scatter_add("ScatterElements", zeros, ctx.input(1), ctx.grad(), axis=axis), None]


def _batched_indices(ctx: VJPContext, indices: str, batch_dims: int) -> str:
    """GatherND ``indices`` [B₁…B_b, K…, q] as batch-free indices [B, K…, 1 + q] (the flat batch index first)."""
    flat = _batch_flat(ctx, indices, batch_dims)
    rank = ctx.rank(indices) - batch_dims + 1
    count = ctx.emit("Squeeze", ctx.emit("Shape", flat, end=1), ctx.const([0]))
    batch = ctx.emit("Range", ctx.const(0), count, ctx.const(1))
    column = ctx.emit("Reshape", batch, ctx.const([-1] + [1] * (rank - 1)))
    column = ctx.emit("Expand", column, ctx.emit("Concat", ctx.emit("Shape", flat, end=-1), ctx.const([1]), axis=0))
    return ctx.emit("Concat", column, flat, axis=-1)


def _batch_flat(ctx: VJPContext, name: str, batch_dims: int) -> str:
    """``name`` with its first ``batch_dims`` dims merged into one."""
    return ctx.emit(
        "Reshape", name, ctx.emit("Concat", ctx.const([-1]), ctx.emit("Shape", name, start=batch_dims), axis=0)
    )


@rule("GatherND")
def gather_nd(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ScatterND(0, indices, ḡ, reduction='add')``; with ``batch_dims`` b the batch dims are merged and the
    batch index is prepended to each index tuple (ScatterND has no batch dims)."""
    x, indices, g = ctx.input(0), ctx.input(1), ctx.grad()
    batch_dims = int(ctx.attr("batch_dims", 0))  # type: ignore[call-overload]
    if batch_dims == 0:
        return [ctx.scatter_add("ScatterND", ctx.zeros_like(x), indices, g), None]
    zeros = _batch_flat(ctx, ctx.zeros_like(x), batch_dims)
    scattered = ctx.scatter_add(
        "ScatterND", zeros, _batched_indices(ctx, indices, batch_dims), _batch_flat(ctx, g, batch_dims)
    )
    return [ctx.emit("Reshape", scattered, ctx.shape_of(x)), None]


def _scatter(ctx: VJPContext, gather: str, **attrs: object) -> list[str | None]:
    """``data̅ = ḡ`` with the written positions zeroed (reduction 'none') or ``ḡ`` ('add'); ``updates̅ = gather(ḡ)``."""
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        ctx.fail(f"reduction '{reduction}' is not supported (only 'none' and 'add')")
    indices, updates, g = ctx.input(1), ctx.input(2), ctx.grad()
    grads: list[str | None] = [None, None, None]
    if ctx.needs(0):
        grads[0] = g if reduction == "add" else ctx.emit(ctx.node.op_type, g, indices, ctx.zeros_like(updates), **attrs)
    if ctx.needs(2):
        grads[2] = ctx.emit(gather, g, indices, **attrs)
    return grads


@rule("ScatterElements")
def scatter_elements(ctx: VJPContext) -> list[str | None]:
    """``data̅ = ScatterElements(ḡ, indices, 0)`` ('none') or ``ḡ`` ('add'); ``updates̅ = GatherElements(ḡ, indices)``."""
    return _scatter(ctx, "GatherElements", axis=int(ctx.attr("axis", 0)))  # type: ignore[call-overload]


@rule("ScatterND")
def scatter_nd(ctx: VJPContext) -> list[str | None]:
    """``data̅ = ScatterND(ḡ, indices, 0)`` ('none') or ``ḡ`` ('add'); ``updates̅ = GatherND(ḡ, indices)``."""
    return _scatter(ctx, "GatherND")


@rule("TopK")
def top_k(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ScatterElements(0, Indices, ḡ_Values, axis)``: each selected value's gradient goes back to where it was
    taken (the op's own ``Indices``, so ties are resolved as in the forward); the indices output carries none."""
    axis = int(ctx.attr("axis", -1))  # type: ignore[call-overload]
    grad = ctx.emit("ScatterElements", ctx.zeros_like(ctx.input(0)), ctx.output(1), ctx.grad(0), axis=axis)
    return [grad, None]
