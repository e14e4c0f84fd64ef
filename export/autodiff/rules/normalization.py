"""VJP rules: normalization ops (gradient w.r.t. the data input only; scales, biases and statistics are constants)."""

from __future__ import annotations

from ..context import VJPContext
from ..registry import rule
from .conv import data_grad_only, static_dims


def _per_channel(ctx: VJPContext, vector: str, rank: int) -> str:
    """A ``(C,)`` tensor reshaped to ``(C, 1, …, 1)`` so that it broadcasts over ``(N, C, …)``."""
    return ctx.emit("Unsqueeze", vector, ctx.const(list(range(1, rank - 1)))) if rank > 2 else vector


def _epsilon(ctx: VJPContext, like: str) -> str:
    return ctx.const(float(ctx.attr("epsilon", 1e-5)), like=like)  # type: ignore[arg-type]


@rule("BatchNormalization")
def batch_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · γ / √(var + ε)`` per channel (inference form: running statistics are constants)."""
    if ctx.attr("training_mode", 0):
        ctx.fail("training_mode=1 (batch statistics) is not supported")
    x, scale, var = ctx.input(0), ctx.input(1), ctx.input(4)
    factor = ctx.emit("Div", scale, ctx.emit("Sqrt", ctx.emit("Add", var, _epsilon(ctx, var))))
    return data_grad_only(ctx, ctx.emit("Mul", ctx.grad(), _per_channel(ctx, factor, ctx.rank(x))))


def _normalized_adjoint(
    ctx: VJPContext, g_hat: str, axes: list[int], x: str | None = None, epsilon: str | None = None
) -> str:
    """``x̄ = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ`` with ``x̂ = (x − mean(x)) / σ``, ``σ = √(var + ε)``, means over
    ``axes`` (``x``: input 0; ``ε``: the ``epsilon`` attribute)."""
    x = x or ctx.input(0)
    axes_const = ctx.const(axes)

    def mean(t: str) -> str:
        return ctx.emit("ReduceMean", t, axes_const, keepdims=1)

    centred = ctx.emit("Sub", x, mean(x))
    inv_std = ctx.emit(
        "Reciprocal",
        ctx.emit("Sqrt", ctx.emit("Add", mean(ctx.emit("Mul", centred, centred)), epsilon or _epsilon(ctx, x))),
    )
    x_hat = ctx.emit("Mul", centred, inv_std)
    inner = ctx.emit(
        "Sub", ctx.emit("Sub", g_hat, mean(g_hat)), ctx.emit("Mul", x_hat, mean(ctx.emit("Mul", g_hat, x_hat)))
    )
    return ctx.emit("Mul", inner, inv_std)


@rule("LayerNormalization")
def layer_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ``, ``ĝ = ḡ·γ``, means over the axes from ``axis`` on."""
    if ctx.has_grad(1) or ctx.has_grad(2):
        ctx.fail("its Mean/InvStdDev outputs are used on the differentiated path; only output Y is differentiated")
    rank = ctx.rank(ctx.input(0))
    axis = int(ctx.attr("axis", -1)) % rank  # type: ignore[call-overload]
    g_hat = ctx.emit("Mul", ctx.grad(), ctx.input(1))
    return data_grad_only(ctx, _normalized_adjoint(ctx, g_hat, list(range(axis, rank))))


@rule("InstanceNormalization")
def instance_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ``, ``ĝ = ḡ·γ_c``, means over the spatial dims of each (n, c)."""
    rank = ctx.rank(ctx.input(0))
    g_hat = ctx.emit("Mul", ctx.grad(), _per_channel(ctx, ctx.input(1), rank))
    return data_grad_only(ctx, _normalized_adjoint(ctx, g_hat, list(range(2, rank))))


def _channel_window_sum(ctx: VJPContext, t: str, before: int, after: int) -> str:
    """``Σ_{i=c−before}^{c+after} t[:, i]`` (zero outside): a Conv over ``t`` viewed as (N, 1, C, -1)."""
    channels = static_dims(ctx, ctx.input(0), 1)[0]
    view = ctx.emit("Reshape", t, ctx.const([0, 1, channels, -1]))
    ones = ctx.const([[[[1.0]] * (before + after + 1)]], like=t)
    summed = ctx.emit("Conv", view, ones, pads=[before, 0, after, 0])
    return ctx.emit("Reshape", summed, ctx.shape_of(t))


@rule("LRN")
def lrn(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ·S^(−β) − (2αβ/n)·x·Σᵀ_window(ḡ·y/S)`` with ``y = x·S^(−β)``, ``S = k + (α/n)·Σ_window x²``."""
    x, y = ctx.input(0), ctx.output(0)
    size = int(ctx.attr("size"))  # type: ignore[call-overload]
    alpha, beta = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75))  # type: ignore[arg-type]
    before, after = (size - 1) // 2, size // 2  # ONNX: window [c − ⌊(n−1)/2⌋, c + ⌈(n−1)/2⌉]
    square_sum = _channel_window_sum(ctx, ctx.emit("Mul", x, x), before, after)
    s = ctx.emit(
        "Add",
        ctx.const(float(ctx.attr("bias", 1.0)), like=x),
        ctx.emit("Mul", square_sum, ctx.const(alpha / size, like=x)),
    )  # type: ignore[arg-type]
    g = ctx.grad()
    direct = ctx.emit("Mul", g, ctx.emit("Pow", s, ctx.const(-beta, like=x)))
    spread = _channel_window_sum(ctx, ctx.emit("Div", ctx.emit("Mul", g, y), s), after, before)
    cross = ctx.emit("Mul", ctx.emit("Mul", x, spread), ctx.const(2 * alpha * beta / size, like=x))
    return [ctx.emit("Sub", direct, cross)]


@rule("GroupNormalization")
def group_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ``, ``ĝ = ḡ·γ``, means over each group of channels and the spatial dims
    (``x`` viewed as [N, G, −1]); ``γ`` per channel (opset 21; opset 18's per-group ``γ`` is refused)."""
    x, scale = ctx.input(0), ctx.input(1)
    channels, (scales,) = ctx.shape(x)[1], static_dims(ctx, scale, 0)
    if isinstance(channels, int) and channels != scales:
        ctx.fail(
            f"needs one scale per channel (opset ≥ 21), got {scales} for {channels} channels; re-export at opset 21"
        )
    grouped = ctx.const([0, int(ctx.attr("num_groups")), -1])  # type: ignore[call-overload]
    g_hat = ctx.emit("Reshape", ctx.emit("Mul", ctx.grad(), _per_channel(ctx, scale, ctx.rank(x))), grouped)
    grad = _normalized_adjoint(ctx, g_hat, [2], ctx.emit("Reshape", x, grouped))
    return data_grad_only(ctx, ctx.emit("Reshape", grad, ctx.shape_of(x)))


@rule("RMSNormalization")
def rms_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = r·(ĝ − x̂·mean(ĝ·x̂))``, ``ĝ = ḡ·γ``, ``r = 1/√(mean(x²) + ε)``, ``x̂ = x·r``, means over the axes from
    ``axis`` on (opset 23; Zhang & Sennrich 2019)."""
    x = ctx.input(0)
    rank = ctx.rank(x)
    axes = ctx.const(list(range(int(ctx.attr("axis", -1)) % rank, rank)))  # type: ignore[call-overload]

    def mean(t: str) -> str:
        return ctx.emit("ReduceMean", t, axes, keepdims=1)

    r = ctx.emit("Reciprocal", ctx.emit("Sqrt", ctx.emit("Add", mean(ctx.emit("Mul", x, x)), _epsilon(ctx, x))))
    x_hat = ctx.emit("Mul", x, r)
    g_hat = ctx.emit("Mul", ctx.grad(), ctx.input(1))
    inner = ctx.emit("Sub", g_hat, ctx.emit("Mul", x_hat, mean(ctx.emit("Mul", g_hat, x_hat))))
    return data_grad_only(ctx, ctx.emit("Mul", inner, r))


@rule("LpNormalization")
def lp_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = (ḡ − d·Σ_axis ḡ·y) / ‖x‖_p``, ``y = x/‖x‖_p``, ``d = ∂‖x‖_p/∂x``: ``y`` (p = 2), ``sign(x)`` (p = 1)."""
    x, y, g = ctx.input(0), ctx.output(0), ctx.grad()
    p = int(ctx.attr("p", 2))  # type: ignore[call-overload]
    axis = ctx.const([int(ctx.attr("axis", -1))])  # type: ignore[call-overload]
    norm = ctx.emit("ReduceL2" if p == 2 else "ReduceL1", x, axis, keepdims=1)
    direction = y if p == 2 else ctx.emit("Sign", x)
    dot = ctx.emit("ReduceSum", ctx.emit("Mul", g, y), axis, keepdims=1)
    return [ctx.emit("Div", ctx.emit("Sub", g, ctx.emit("Mul", direction, dot)), norm)]


@rule("MeanVarianceNormalization")
def mean_variance_normalization(ctx: VJPContext) -> list[str | None]:
    """``x̄ = (ḡ − mean(ḡ) − x̂·mean(ḡ·x̂)) / σ`` for ``y = x̂ = (x − mean(x)) / σ`` over ``axes`` (no ε, as the spec
    and onnxruntime)."""
    x = ctx.input(0)
    axes = [int(a) % ctx.rank(x) for a in ctx.attr("axes", [0, 2, 3])]  # type: ignore[union-attr]
    return [_normalized_adjoint(ctx, ctx.grad(), axes, epsilon=ctx.const(0.0, like=x))]
