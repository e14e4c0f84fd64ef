"""VJP rules: ``GridSample`` (2-D; bilinear or nearest; zeros or border padding; ``align_corners``), ``AffineGrid``.

The forward reads, for each output pixel, the input at a sampling point ``(u, v)`` given by the grid in ``[−1, 1]``:
``u = ((g_x + 1)/2)·(W − 1)`` with ``align_corners``, ``((g_x + 1)·W − 1)/2`` without (``v`` likewise with ``H``),
clamped to ``[0, W − 1]`` for border padding. Bilinear: ``y = Σ_corners w_k · x[v_k, u_k]`` over the 4 neighbours,
``w_k = (1 − |u − u_k|)(1 − |v − v_k|)``, corners outside the image reading 0. Hence ``x̄`` scatter-adds ``ḡ · w_k`` at
the corners, and ``ḡrid = Σ_c ḡ · Σ_k x_k · ∂w_k/∂(u, v) · ∂(u, v)/∂g`` (0 where border clamping is active, as torch
does). Nearest reads ``x`` at the rounded point (half to even, as onnxruntime and torch): ``x̄`` scatters ``ḡ`` there
and the grid gets 0. Reference: PyTorch's ``grid_sampler_2d_backward`` (aten/src/ATen/native/GridSampler.cpp).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..context import VJPContext
from ..registry import rule
from .conv import static_dims

_MODES = ("bilinear", "linear", "nearest")  # opset 16 says bilinear, opset 20 linear


def _float_type(ctx: VJPContext) -> int:
    return helper.np_dtype_to_tensor_dtype(ctx.dtype(ctx.input(1)))


def _points(ctx: VJPContext, sizes: str) -> tuple[str, str]:
    """The sampling points ``(u, v)`` [N, L, 2] in pixels and ``∂(u, v)/∂g`` [N, L, 2] (0 where border-clamped)."""
    grid = ctx.input(1)
    one, half, zero = ctx.const(1.0, like=grid), ctx.const(0.5, like=grid), ctx.const(0.0, like=grid)
    flat = ctx.emit("Reshape", grid, ctx.const([0, -1, 2]))
    last = ctx.emit("Sub", sizes, one)
    scale = ctx.emit("Mul", last if ctx.attr("align_corners", 0) else sizes, half)
    point = ctx.emit("Mul", ctx.emit("Add", flat, one), scale)
    if not ctx.attr("align_corners", 0):
        point = ctx.emit("Sub", point, half)
    slope = ctx.emit("Expand", scale, ctx.shape_of(flat))
    if ctx.attr("padding_mode", "zeros") == "border":
        inside = ctx.emit("And", ctx.emit("GreaterOrEqual", point, zero), ctx.emit("LessOrEqual", point, last))
        slope = ctx.emit("Where", inside, slope, zero)
        point = ctx.emit("Max", ctx.emit("Min", point, last), zero)
    return point, slope


def _read(ctx: VJPContext, corner: str, sizes: str) -> tuple[str, str]:
    """For integer-valued points ``corner`` [N, L, 2]: the flat index ``v·W + u`` [N, L] (0 outside the image) and
    the in-image mask [N, L] (float)."""
    zero = ctx.const(0.0, like=ctx.input(1))
    inside = ctx.emit(
        "And",
        ctx.emit("GreaterOrEqual", corner, zero),
        ctx.emit("LessOrEqual", corner, ctx.emit("Sub", sizes, ctx.const(1.0, like=ctx.input(1)))),
    )
    mask = ctx.emit("ReduceMin", ctx.emit("Cast", inside, to=_float_type(ctx)), ctx.const([2]), keepdims=0)
    steps = ctx.emit("Concat", ctx.const([1.0], like=ctx.input(1)), ctx.emit("Gather", sizes, ctx.const([0])), axis=0)
    flat = ctx.emit("ReduceSum", ctx.emit("Mul", corner, steps), ctx.const([2]), keepdims=0)
    return ctx.emit("Cast", ctx.emit("Mul", flat, mask), to=TensorProto.INT64), mask


def _corners(ctx: VJPContext, point: str) -> list[tuple[str, str | None, list[float]]]:
    """``(corner [N, L, 2], per-axis weights [N, L, 2] or None for nearest, ∂w/∂(u, v) signs)`` of each neighbour."""
    if ctx.attr("mode", "bilinear") == "nearest":
        return [(ctx.emit("Round", point), None, [])]
    grid = ctx.input(1)
    low = ctx.emit("Floor", point)
    frac = ctx.emit("Sub", point, low)  # weight of the high neighbour, per axis
    corners = []
    for offset in ([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
        sign = [2.0 * o - 1.0 for o in offset]  # −1 towards the low neighbour, +1 the high one
        weights = ctx.emit(
            "Add", ctx.emit("Mul", frac, ctx.const(sign, like=grid)), ctx.const([1.0 - o for o in offset], like=grid)
        )
        corners.append((ctx.emit("Add", low, ctx.const(offset, like=grid)), weights, sign))
    return corners


def _point_slope(ctx: VJPContext, flat_g: str, read: str, mask: str, weights: str, sign: list[float]) -> str:
    """One corner's ``Σ_c ḡ·x_k · ∂w_k/∂(u, v)`` [N, L, 2]: ``∂w_k/∂u = ±w_v``, ``∂w_k/∂v = ±w_u`` (in-image only)."""
    dot = ctx.emit("ReduceSum", ctx.emit("Mul", flat_g, read), ctx.const([1]), keepdims=0)  # [N, L]
    scale = ctx.emit("Unsqueeze", ctx.emit("Mul", dot, mask), ctx.const([2]))
    other = ctx.emit("Gather", weights, ctx.const([1, 0]), axis=2)  # (w_v, w_u)
    return ctx.emit("Mul", scale, ctx.emit("Mul", other, ctx.const(sign, like=ctx.input(1))))


@rule("GridSample")
def grid_sample(ctx: VJPContext) -> list[str | None]:
    """``x̄ = Σ_k ScatterAdd(ḡ · w_k)`` at the corners ``k``; ``ḡrid = Σ_k (Σ_c ḡ·x_k) · ∂w_k/∂(u, v) · ∂(u, v)/∂g``."""
    x, grid = ctx.input(0), ctx.input(1)
    padding = ctx.attr("padding_mode", "zeros")
    if ctx.rank(x) != 4 or str(ctx.attr("mode", "bilinear")) not in _MODES or padding not in ("zeros", "border"):
        ctx.fail(
            f"only 2-D bilinear/nearest sampling with zeros/border padding is differentiable, got rank {ctx.rank(x)}, "
            f"mode '{ctx.attr('mode', 'bilinear')}', padding_mode '{padding}'"
        )
    sizes = ctx.emit("Cast", ctx.emit("Gather", ctx.emit("Shape", x, start=2), ctx.const([1, 0])), to=_float_type(ctx))
    point, slope = _points(ctx, sizes)
    flat_x = ctx.emit("Reshape", x, ctx.const([0, 0, -1]))  # [N, C, H·W]
    flat_g = ctx.emit("Reshape", ctx.grad(), ctx.const([0, 0, -1]))  # [N, C, L]
    indices, values, grid_terms = [], [], []
    for corner, weights, sign in _corners(ctx, point):
        index, mask = _read(ctx, corner, sizes)
        spread = ctx.emit("Expand", ctx.emit("Unsqueeze", index, ctx.const([1])), ctx.shape_of(flat_g))  # [N, C, L]
        weight = (
            mask
            if weights is None
            else ctx.emit("Mul", ctx.emit("ReduceProd", weights, ctx.const([2]), keepdims=0), mask)
        )
        indices.append(spread)
        values.append(ctx.emit("Mul", flat_g, ctx.emit("Unsqueeze", weight, ctx.const([1]))))
        if weights is not None and ctx.needs(1):
            grid_terms.append(
                _point_slope(ctx, flat_g, ctx.emit("GatherElements", flat_x, spread, axis=2), mask, weights, sign)
            )
    grads: list[str | None] = [None, None]
    if ctx.needs(0):
        zeros = ctx.zeros_like(flat_x)
        scattered = ctx.scatter_add(
            "ScatterElements", zeros, ctx.emit("Concat", *indices, axis=2), ctx.emit("Concat", *values, axis=2), axis=2
        )
        grads[0] = ctx.emit("Reshape", scattered, ctx.shape_of(x))
    if ctx.needs(1):
        if not grid_terms:  # nearest: piecewise constant in the grid
            grads[1] = ctx.zeros_like(grid)
        else:
            total = grid_terms[0] if len(grid_terms) == 1 else ctx.emit("Sum", *grid_terms)
            grads[1] = ctx.emit("Reshape", ctx.emit("Mul", total, slope), ctx.shape_of(grid))
    return grads


@rule("AffineGrid")
def affine_grid(ctx: VJPContext) -> list[str | None]:
    """``θ̄[n] = Σ_pixels ḡ[n, p]ᵀ ⊗ (b[p], 1)``: the grid is ``θ[n]·(b, 1)`` with ``b`` the base grid, which is
    the op's own output for the identity ``θ`` (so ``align_corners`` means what the forward means)."""
    theta, size = ctx.input(0), ctx.input(1)
    rank = static_dims(ctx, size, 0)[0] - 2  # spatial dims: 2 (θ [N, 2, 3]) or 3 (θ [N, 3, 4])
    identity = ctx.const(np.eye(rank, rank + 1)[None], like=theta)
    one_image = ctx.emit(
        "Concat", ctx.const([1]), ctx.emit("Slice", size, ctx.const([1]), ctx.const([rank + 2])), axis=0
    )
    base = ctx.emit("AffineGrid", identity, one_image, align_corners=int(ctx.attr("align_corners", 0)))  # type: ignore[call-overload]
    homogeneous = ctx.emit(
        "Pad", base, ctx.const([0] * (rank + 2) + [0] * (rank + 1) + [1]), ctx.const(1.0, like=theta)
    )
    pixels = "dhw"[3 - rank :]
    equation = f"n{pixels}i,m{pixels}j->nij"
    return [ctx.emit("Einsum", ctx.grad(), homogeneous, equation=equation), None]
