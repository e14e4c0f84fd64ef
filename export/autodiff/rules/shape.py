"""VJP rules: ops that move, copy or select elements without computing on them.

Every rule is linear in ``x``, so ``x̄`` is ``ḡ`` routed back through the adjoint of the data movement. Shapes are
taken at run time (``Shape`` nodes) where that is cheap, so a dynamic batch dim is fine everywhere; only
``DepthToSpace`` (CRD) needs a static dim, the channel count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..context import VJPContext
from ..registry import rule


def _data_only(ctx: VJPContext, grad: str) -> list[str | None]:
    """``grad`` for input 0; ``None`` for the shape-like inputs (shape, axes, pads, …) that are never differentiated."""
    return [grad] + [None] * (len(ctx.inputs) - 1)


def _axis(ctx: VJPContext, axis: int, name: str) -> int:
    """``axis`` counted from 0 in ``name``'s rank."""
    return axis % ctx.rank(name)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Reshape(ḡ, Shape(x))``."""
    return _data_only(ctx, ctx.emit("Reshape", ctx.grad(), ctx.shape_of(ctx.input(0))))


@rule("Transpose")
def transpose(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Transpose(ḡ, perm⁻¹)``."""
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(ctx.input(0)))))
    return [ctx.emit("Transpose", ctx.grad(), perm=[int(p) for p in np.argsort(perm)])]


@rule("Concat")
def concat(ctx: VJPContext) -> list[str | None]:
    """``x̄ᵢ = ḡ[…, offsetᵢ : offsetᵢ + dᵢ, …]`` along ``axis`` (one ``Split`` of ``ḡ``)."""
    axis = _axis(ctx, int(ctx.attr("axis")), ctx.output(0))
    dims = [ctx.shape(x)[axis] for x in ctx.inputs]
    if all(isinstance(d, int) for d in dims):
        sizes = ctx.const(dims)
    else:
        sizes = ctx.emit("Concat", *(ctx.emit("Shape", x, start=axis, end=axis + 1) for x in ctx.inputs), axis=0)
    pieces = ctx.emit_multi("Split", [ctx.grad(), sizes], len(ctx.inputs), axis=axis)
    return [piece if ctx.needs(i) else None for i, piece in enumerate(pieces)]


@rule("Split")
def split(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Concat(ḡ₀, …, ḡₙ₋₁)`` along ``axis`` (zeros for outputs that receive no gradient)."""
    grads = [ctx.grad(i) for i in range(len(ctx.outputs))]
    return _data_only(ctx, ctx.emit("Concat", *grads, axis=int(ctx.attr("axis", 0))))


def _slice_range(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX ``Slice`` takes along an axis of length ``dim`` (negative values wrap, then clamp)."""
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


def _unslice_axis(ctx: VJPContext, grad: str, axis: int, taken: range, dim: int) -> str:
    """Put ``grad``'s entries back at positions ``taken`` of a length-``dim`` axis, zeros elsewhere.

    ``Gather`` from ``[grad, 0]`` with, for each position, the index of the entry that came from it (or of the zero).
    """
    source = np.full(dim, len(taken), dtype=np.int64)
    source[list(taken)] = np.arange(len(taken))
    zero = ctx.emit(
        "Mul", ctx.emit("Slice", grad, ctx.const([0]), ctx.const([1]), ctx.const([axis])), ctx.const(0.0, like=grad)
    )
    return ctx.emit("Gather", ctx.emit("Concat", grad, zero, axis=axis), ctx.const(source), axis=axis)


def _unslice_runtime(ctx: VJPContext, axes: Sequence[int]) -> str:
    """Slice VJP with the sizes and bounds read at run time (``chunk`` traced with symbolic shapes; an axis whose size
    is symbolic).

    Per sliced axis ``a``: ``taken = Slice(Range(0, dim_a), start, end, step)`` are the positions read, and
    ``ScatterElements`` puts ``ḡ`` back there into zeros (positions are distinct, so no accumulation is needed).
    """
    x, grad = ctx.input(0), ctx.grad()
    rank = ctx.rank(x)
    steps = ctx.input(4) or ctx.const(np.ones(len(axes), np.int64))
    for i, axis in enumerate(axes):
        pick = [ctx.const([i]), ctx.const([i + 1])]
        dim = ctx.emit("Shape", x, start=axis, end=axis + 1)
        positions = ctx.emit("Range", ctx.const(0), ctx.emit("Squeeze", dim), ctx.const(1))
        taken = ctx.emit(
            "Slice",
            positions,
            ctx.emit("Slice", ctx.input(1), *pick),
            ctx.emit("Slice", ctx.input(2), *pick),
            ctx.const([0]),
            ctx.emit("Slice", steps, *pick),
        )
        grad_shape = ctx.shape_of(grad)
        full = ctx.emit("ScatterElements", grad_shape, ctx.const([axis]), dim, axis=0)
        zeros = ctx.emit("ConstantOfShape", full, value=_scalar_tensor(0.0, ctx.dtype(x)))
        column = ctx.emit("Reshape", taken, ctx.const([1] * axis + [-1] + [1] * (rank - axis - 1)))
        grad = ctx.emit("ScatterElements", zeros, ctx.emit("Expand", column, grad_shape), grad, axis=axis)
    return grad


def _scalar_tensor(value: float, dtype: np.dtype) -> onnx.TensorProto:
    """A one-element tensor (``ConstantOfShape``'s fill value)."""
    return numpy_helper.from_array(np.array([value], dtype=dtype))


@rule("Slice")
def slice_(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` scattered back into zeros at the sliced positions (``Pad`` for unit steps, ``Gather`` otherwise).

    Bounds computed at run time, or a sliced axis whose size shape inference leaves symbolic (TorchScript's
    ``flatten`` of a map whose batch is dynamic), take the positions at run time instead (:func:`_unslice_runtime`).
    """
    x = ctx.input(0)
    shape = ctx.shape(x)
    starts, ends, steps = ctx.optional_constant(1), ctx.optional_constant(2), ctx.optional_constant(4)
    axes = ctx.optional_constant(3)
    if ctx.input(3) and axes is None:
        ctx.fail("needs constant axes")
    if axes is None:
        count = ctx.shape(ctx.input(1))[0]
        if not isinstance(count, int):
            ctx.fail(f"needs the number of sliced axes, got {count}")
        axes = np.arange(count)
    axes = [_axis(ctx, int(axis), x) for axis in axes]
    if (
        starts is None
        or ends is None
        or (ctx.input(4) and steps is None)
        or any(not isinstance(shape[axis], int) for axis in axes)
    ):
        return _data_only(ctx, _unslice_runtime(ctx, axes))
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    grad = ctx.grad()
    pads = [0] * (2 * len(shape))
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = shape[axis]
        taken = _slice_range(dim, int(start), int(end), int(step))
        if taken.step == 1:
            pads[axis], pads[axis + len(shape)] = taken.start, dim - taken.start - len(taken)
        else:
            grad = _unslice_axis(ctx, grad, axis, taken, dim)
    if any(pads):
        grad = ctx.emit("Pad", grad, ctx.const(pads))
    return _data_only(ctx, grad)


@rule("Gather")
def gather(ctx: VJPContext) -> list[str | None]:
    """``x̄[…, idx[j], …] += ḡ[…, j, …]`` (``ScatterElements`` with ``reduction='add'``, so repeated indices add up)."""
    x, indices = ctx.input(0), ctx.input(1)
    rank = ctx.rank(x)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), x)
    grad = ctx.grad()
    if ctx.rank(indices) != 1:  # fold the index dims of ḡ into one axis
        outer = ctx.emit("Shape", x, end=axis)
        inner = ctx.emit("Shape", x, start=axis + 1)
        grad = ctx.emit("Reshape", grad, ctx.emit("Concat", outer, ctx.const([-1]), inner, axis=0))
    column = ctx.emit("Reshape", indices, ctx.const([1] * axis + [-1] + [1] * (rank - axis - 1)))
    spread = ctx.emit("Expand", column, ctx.shape_of(grad))
    scattered = ctx.scatter_add("ScatterElements", ctx.zeros_like(x), spread, grad, axis=axis)
    return [scattered, None]


@rule("Expand")
def expand(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Σ_{broadcast axes} ḡ``."""
    return [ctx.unbroadcast(ctx.grad(), ctx.input(0), ctx.output(0)), None]


@rule("Pad")
def pad(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Pad(ḡ, −pads)``: crops what was padded and zero-fills what negative pads cropped (constant mode)."""
    if ctx.attr("mode", "constant") != "constant":
        ctx.fail(f"only mode 'constant' is supported, got '{ctx.attr('mode')}'")
    if ctx.needs(2):
        ctx.fail("no gradient for the padding value")
    axes = [ctx.input(3)] if ctx.input(3) else []
    return _data_only(ctx, ctx.emit("Pad", ctx.grad(), ctx.emit("Neg", ctx.input(1)), "", *axes))


@rule("Tile")
def tile(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Σ_{tiles} ḡ``: view ``ḡ`` as ``[r₀, d₀, r₁, d₁, …]`` and sum the ``rᵢ`` axes."""
    x = ctx.input(0)
    column = ctx.const([1])
    pairs = [ctx.emit("Unsqueeze", ctx.input(1), column), ctx.emit("Unsqueeze", ctx.shape_of(x), column)]
    interleaved = ctx.emit("Reshape", ctx.emit("Concat", *pairs, axis=1), ctx.const([-1]))
    tiles = ctx.emit("Reshape", ctx.grad(), interleaved)
    axes = ctx.const(list(range(0, 2 * ctx.rank(x), 2)))
    return [ctx.emit("ReduceSum", tiles, axes, keepdims=0), None]


@rule("SpaceToDepth")
def space_to_depth(ctx: VJPContext) -> list[str | None]:
    """``x̄ = DepthToSpace_DCR(ḡ)`` (the inverse permutation)."""
    return [ctx.emit("DepthToSpace", ctx.grad(), blocksize=int(ctx.attr("blocksize")), mode="DCR")]


@rule("DepthToSpace")
def depth_to_space(ctx: VJPContext) -> list[str | None]:
    """``x̄ = SpaceToDepth(ḡ)``, whose DCR channel order is permuted back to CRD order for ``mode='CRD'``."""
    block = int(ctx.attr("blocksize"))
    grad = ctx.emit("SpaceToDepth", ctx.grad(), blocksize=block)
    if ctx.attr("mode", "DCR") == "CRD":
        channels = ctx.shape(ctx.input(0))[1]
        if not isinstance(channels, int):
            ctx.fail(f"needs a static channel count, got {channels}")
        dcr_of_crd = np.arange(channels).reshape(block * block, -1).T.ravel()
        grad = ctx.emit("Gather", grad, ctx.const(dcr_of_crd), axis=1)
    return [grad]


@rule("Trilu")
def trilu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Trilu(ḡ)`` with the same ``k`` and ``upper`` (a fixed mask)."""
    k = [ctx.input(1)] if ctx.input(1) else []
    return _data_only(ctx, ctx.emit("Trilu", ctx.grad(), *k, upper=int(ctx.attr("upper", 1))))  # type: ignore[call-overload]


@rule("CenterCropPad")
def center_crop_pad(ctx: VJPContext) -> list[str | None]:
    """``x̄ = CenterCropPad(ḡ, Shape(x))``: cropping and padding about the centre use the same offset ``⌊(n − s)/2⌋``,
    so the op back to the input's size is the adjoint (padded rows read 0, cropped rows get 0)."""
    x = ctx.input(0)
    axes = ctx.attr("axes", None)
    shape = ctx.shape_of(x) if axes is None else ctx.emit("Gather", ctx.shape_of(x), ctx.const(list(axes)))  # type: ignore[arg-type]
    attrs = {} if axes is None else {"axes": list(axes)}  # type: ignore[arg-type]
    return _data_only(ctx, ctx.emit("CenterCropPad", ctx.grad(), shape, **attrs))


@rule("Compress")
def compress(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ScatterElements(0, k, ḡ, reduction='add')`` along ``axis`` (or over the flattened ``x``), ``k`` the
    positions where the condition holds (``NonZero``), i.e. the adjoint of a ``Gather`` at ``k``."""
    x = ctx.input(0)
    picked = ctx.emit("Reshape", ctx.emit("NonZero", ctx.input(1)), ctx.const([-1]))
    axis = ctx.attr("axis", None)
    if axis is None:
        flat = ctx.emit("Reshape", ctx.zeros_like(x), ctx.const([-1]))
        scattered = ctx.scatter_add("ScatterElements", flat, picked, ctx.grad(), axis=0)
        return _data_only(ctx, ctx.emit("Reshape", scattered, ctx.shape_of(x)))
    rank = ctx.rank(x)
    axis = _axis(ctx, int(axis), x)  # type: ignore[call-overload]
    column = ctx.emit("Reshape", picked, ctx.const([1] * axis + [-1] + [1] * (rank - axis - 1)))
    spread = ctx.emit("Expand", column, ctx.shape_of(ctx.grad()))
    grad = ctx.scatter_add("ScatterElements", ctx.zeros_like(x), spread, ctx.grad(), axis=axis)
    return _data_only(ctx, grad)


@rule("ReverseSequence")
def reverse_sequence(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ReverseSequence(ḡ)``, same lengths and axes (reversing a prefix is its own inverse and transpose)."""
    attrs = {a: int(ctx.attr(a, d)) for a, d in (("batch_axis", 1), ("time_axis", 0))}  # type: ignore[call-overload]
    return _data_only(ctx, ctx.emit("ReverseSequence", ctx.grad(), ctx.input(1), **attrs))
