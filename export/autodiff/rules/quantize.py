"""VJP rules: ``QuantizeLinear``/``DequantizeLinear`` (int8 QDQ graphs) by the straight-through estimator.

The exact derivative of ``DequantizeLinear(QuantizeLinear(x))`` is zero almost everywhere (a staircase), so the
backward treats each Quantize→Dequantize pair as the straight-through estimator (STE) of quantization-aware training
(Bengio, Léonard & Courville 2013, arXiv:1308.3432; Jacob et al. 2018, "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR; as ``torch.fake_quantize_per_tensor_affine``'s backward):
``x̄ = ḡ · [q_min ≤ round(x / s) + z ≤ q_max]`` — the gradient passes where the value is inside the quantization
range and is zero where it is clipped. The forward stays the deployed integer graph.

The pair is split over the two ops: the integer tensor ``q`` carries its gradient in the real units of the
dequantized value (``DequantizeLinear``: ``q̄ = ḡ``), and ``QuantizeLinear`` applies the range mask.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..context import VJPContext
from ..registry import rule


@rule("DequantizeLinear")
def dequantize_linear(ctx: VJPContext) -> list[str | None]:
    """``q̄ = ḡ`` (STE half: the gradient w.r.t. the dequantized value, handed to the integer tensor unchanged)."""
    return [ctx.grad(), None, None]


def _per_axis(ctx: VJPContext, name: str, axis: int, rank: int) -> str:
    """A 1-D per-channel ``scale``/``zero_point`` reshaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return ctx.emit("Reshape", name, ctx.const(shape))


@rule("QuantizeLinear")
def quantize_linear(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [q_min ≤ round(x / s) + z ≤ q_max]`` (STE; per-tensor or per-axis ``s``, ``z``; ``[q_min, q_max]``
    the range of the output's integer type; ``Round`` halves to even, as ``QuantizeLinear``)."""
    x, scale, zero = ctx.input(0), ctx.input(1), ctx.input(2)
    out = ctx.dtype(ctx.output())
    if out.kind not in "iu":
        ctx.fail(f"only integer quantization is differentiable, got {out.name}")
    if ctx.attr("block_size", 0):
        ctx.fail("blocked quantization (block_size) has no gradient rule")
    rank = ctx.rank(x)
    per_axis = len(ctx.shape(scale)) == 1 and ctx.shape(scale) != (1,)
    axis = int(ctx.attr("axis", 1)) % rank  # type: ignore[call-overload]
    if per_axis:
        scale = _per_axis(ctx, scale, axis, rank)
    level = ctx.emit("Round", ctx.emit("Div", x, scale))
    if zero:
        to = helper.np_dtype_to_tensor_dtype(ctx.dtype(x))
        zero_point = ctx.emit("Cast", zero, to=to)
        level = ctx.emit("Add", level, _per_axis(ctx, zero_point, axis, rank) if per_axis else zero_point)
    limits = np.iinfo(out)
    inside = ctx.emit(
        "And",
        ctx.emit("GreaterOrEqual", level, ctx.const(float(limits.min), like=x)),
        ctx.emit("LessOrEqual", level, ctx.const(float(limits.max), like=x)),
    )
    return [ctx.emit("Where", inside, ctx.grad(), ctx.const(0.0, like=x)), None, None]


def straight_through(graph: onnx.GraphProto) -> set[str]:
    """The integer outputs of ``QuantizeLinear`` nodes: the engine differentiates through them (STE)."""
    return {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")}
