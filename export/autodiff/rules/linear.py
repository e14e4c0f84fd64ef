"""VJP rules: matrix products (``Gemm``, ``MatMul``, ``Einsum``, ``Attention``)."""

from __future__ import annotations

import math

from onnx import helper

from ..context import VJPContext
from ..graph_info import Dim
from ..registry import rule


@rule("Gemm")
def gemm(ctx: VJPContext) -> list[str | None]:
    """``Y = α·A'B' + β·C``: ``Ā' = α·ḡB'ᵀ``, ``B̄' = α·A'ᵀḡ``, ``C̄ = β·Σ_{broadcast} ḡ`` (``A' = Aᵀ`` if transA, …)."""
    a, b = ctx.input(0), ctx.input(1)
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    g = ctx.grad()

    def product(left: str, right: str, t_left: int, t_right: int) -> str:
        return ctx.emit("Gemm", left, right, transA=t_left, transB=t_right, alpha=alpha)

    grads: list[str | None] = [None] * len(ctx.inputs)
    if ctx.needs(0):
        grads[0] = product(b, g, trans_b, 1) if trans_a else product(g, b, 0, 1 - trans_b)
    if ctx.needs(1):
        grads[1] = product(g, a, 1, trans_a) if trans_b else product(a, g, 1 - trans_a, 0)
    if ctx.needs(2):
        scaled = g if beta == 1.0 else ctx.emit("Mul", g, ctx.const(beta, like=g))
        grads[2] = ctx.unbroadcast(scaled, ctx.input(2), ctx.output(0))
    return grads


def _sum_to_operand(ctx: VJPContext, grad: str, operand: str, batch: tuple[Dim, ...]) -> str:
    """Sum ``grad`` (``[*batch, rows, cols]``) over the batch dims that ``operand`` broadcast, then reshape to it."""
    shape = ctx.shape(operand)
    own = shape[:-2]
    lead = len(batch) - len(own)
    axes = list(range(lead)) + [lead + k for k, d in enumerate(own) if d == 1 and batch[lead + k] != 1]
    if axes:
        grad = ctx.emit("ReduceSum", grad, ctx.const(axes), keepdims=1)
    if axes or len(shape) == 1:
        grad = ctx.emit("Reshape", grad, ctx.shape_of(operand))
    return grad


def _last_two_swapped(ctx: VJPContext, name: str, rank: int) -> str:
    return ctx.emit("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])


@rule("MatMul")
def matmul(ctx: VJPContext) -> list[str | None]:
    """``Ā = Σ_{broadcast} ḡ·Bᵀ``, ``B̄ = Σ_{broadcast} Aᵀ·ḡ`` (1-D operands promoted to matrices as in numpy)."""
    a, b = ctx.input(0), ctx.input(1)
    rank_a, rank_b = ctx.rank(a), ctx.rank(b)
    g = ctx.grad()
    if rank_b == 1:  # y lost B's column axis
        b = ctx.emit("Unsqueeze", b, ctx.const([1]))
        g = ctx.emit("Unsqueeze", g, ctx.const([-1]))
    if rank_a == 1:  # y lost A's row axis
        a = ctx.emit("Unsqueeze", a, ctx.const([0]))
        g = ctx.emit("Unsqueeze", g, ctx.const([-2]))
    batch = ctx.shape(ctx.output(0))[: max(rank_a, rank_b, 2) - 2]
    grad_a = grad_b = None
    if ctx.needs(0):
        full = ctx.emit("MatMul", g, _last_two_swapped(ctx, b, max(rank_b, 2)))
        grad_a = _sum_to_operand(ctx, full, ctx.input(0), batch)
    if ctx.needs(1):
        full = ctx.emit("MatMul", _last_two_swapped(ctx, a, max(rank_a, 2)), g)
        grad_b = _sum_to_operand(ctx, full, ctx.input(1), batch)
    return [grad_a, grad_b]


def _einsum_terms(ctx: VJPContext) -> tuple[list[str], str]:
    """The operand terms and the output term of ``Einsum``'s equation, ``...`` spelled out with unused letters and an
    implicit output made explicit (letters used once, in alphabetical order, after the ellipsis dims)."""
    equation = str(ctx.attr("equation")).replace(" ", "")
    left, arrow, right = equation.partition("->")
    terms = left.split(",")
    spare = iter(sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") - set(equation)))
    ellipsis_rank = {
        ctx.rank(name) - len(t.replace("...", "")) for name, t in zip(ctx.inputs, terms, strict=True) if "..." in t
    }
    if len(ellipsis_rank) > 1:
        ctx.fail(f"equation '{equation}': operands whose '...' span different ranks are not supported")
    dots = "".join(next(spare) for _ in range(ellipsis_rank.pop())) if ellipsis_rank else ""
    terms = [t.replace("...", dots) for t in terms]
    if not arrow:
        counts = "".join(terms)
        right = dots + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in dots))
    right = right.replace("...", dots)
    if any(len(set(t)) != len(t) for t in [*terms, right]):
        ctx.fail(f"equation '{equation}': a letter repeated within one term (diagonal, trace) is not supported")
    return terms, right


@rule("Einsum")
def einsum(ctx: VJPContext) -> list[str | None]:
    """``x̄ᵢ = Einsum(ḡ, xⱼ (j ≠ i))`` from the output's and the other operands' terms to operand ``i``'s term (the
    product rule for a multilinear map), then broadcast over the letters only ``xᵢ`` had (summed out by the forward)."""
    terms, out = _einsum_terms(ctx)
    grads: list[str | None] = []
    for i, (name, term) in enumerate(zip(ctx.inputs, terms, strict=True)):
        if not ctx.needs(i):
            grads.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        seen = set(out).union(*others)
        kept = "".join(c for c in term if c in seen)
        equation = ",".join([out, *others]) + "->" + kept
        grad = ctx.emit("Einsum", ctx.grad(), *(n for j, n in enumerate(ctx.inputs) if j != i), equation=equation)
        if kept != term:  # letters summed by the forward only within xᵢ: x̄ is constant along them
            lost = [k for k, c in enumerate(term) if c not in seen]
            grad = ctx.emit("Expand", ctx.emit("Unsqueeze", grad, ctx.const(lost)), ctx.shape_of(name))
        grads.append(grad)
    return grads


@rule("Attention")
def attention(ctx: VJPContext) -> list[str | None]:
    """``Y = P·V``, ``P = softmax(s·QKᵀ + mask)`` (opset 23, 4-D, as many K/V heads as Q heads, no KV cache, no
    softcap): ``V̄ = Pᵀḡ``, ``S̄ = P ⊙ (ḡVᵀ − Σ_row(ḡVᵀ ⊙ P))``, ``Q̄ = s·S̄K``, ``K̄ = s·S̄ᵀQ``. ``P`` comes from a twin
    node with ``qk_matmul_output_mode=3`` (the post-softmax scores), so mask and causality mean what the forward means.
    """
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    q_shape, k_shape = ctx.shape(q), ctx.shape(k)
    if (
        len(q_shape) != 4
        or any(ctx.input(i) for i in (4, 5))
        or float(ctx.attr("softcap", 0.0))  # type: ignore[arg-type]
        or q_shape[1] != k_shape[1]
        or any(ctx.has_grad(i) for i in (1, 2, 3))
        or ctx.needs(3)
    ):
        ctx.fail(
            "only 4-D attention with equal Q/KV heads, no past key/value, no softcap, and gradients through Y to "
            "Q, K, V is differentiable"
        )
    depth = q_shape[3]
    if ctx.attr("scale", None) is None and not isinstance(depth, int):
        ctx.fail(f"the default scale 1/√D needs a static head size, got {depth}")
    scale = float(ctx.attr("scale", None) or 1.0 / math.sqrt(depth))  # type: ignore[arg-type]
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute} | {"qk_matmul_output_mode": 3}
    probabilities = ctx.emit_multi("Attention", ctx.inputs[:4], 4, **attrs)[3]
    g = ctx.grad(0)

    def swapped(name: str) -> str:
        return _last_two_swapped(ctx, name, 4)

    grads: list[str | None] = [None] * len(ctx.inputs)
    if ctx.needs(2):
        grads[2] = ctx.emit("MatMul", swapped(probabilities), g)
    if ctx.needs(0) or ctx.needs(1):
        p_bar = ctx.emit("MatMul", g, swapped(v))
        row = ctx.emit("ReduceSum", ctx.emit("Mul", p_bar, probabilities), ctx.const([-1]), keepdims=1)
        s_bar = ctx.emit("Mul", ctx.emit("Mul", probabilities, ctx.emit("Sub", p_bar, row)), ctx.const(scale, like=q))
        if ctx.needs(0):
            grads[0] = ctx.emit("MatMul", s_bar, k)
        if ctx.needs(1):
            grads[1] = ctx.emit("MatMul", swapped(s_bar), q)
    return grads
