"""VJP rules: element-wise activations and arithmetic.

Conventions at the kinks follow torch autograd: the flat or outer piece owns the kink. So ``[x > 0]`` for the ReLU
family and ELU/SELU (negative branch at ``x = 0``), ``[min < x < max]`` for ``Clip`` (as ``torch.clamp`` with scalar
bounds and ``relu6``), ``HardSigmoid`` and ``HardSwish`` saturated at ``±3`` (as ``torch.nn.functional``),
``sign(0) = 0`` for ``Abs``, and ties of ``Max``/``Min`` share the gradient equally (as ``torch.maximum`` for two
inputs and ``torch.amax`` for more).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from ..context import VJPContext
from ..registry import rule

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@rule("Relu")
def relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [y > 0]`` (``y > 0 ⇔ x > 0``; reading the output leaves onnxruntime free to fuse Conv + Relu)."""
    y = ctx.output()
    positive = ctx.emit("Greater", y, ctx.const(0.0, like=y))
    return [ctx.emit("Where", positive, ctx.grad(), ctx.const(0.0, like=y))]


# -- helpers -----------------------------------------------------------------------------------------------------------
def _scaled(ctx: VJPContext, derivative: str) -> list[str | None]:
    """``x̄ = ḡ · derivative`` for a unary op."""
    return [ctx.emit("Mul", ctx.grad(), derivative)]


def _split_at_zero(ctx: VJPContext, positive: str, negative: str) -> str:
    """``positive`` where ``x > 0``, else ``negative``."""
    x = ctx.input(0)
    return ctx.emit("Where", ctx.emit("Greater", x, ctx.const(0.0, like=x)), positive, negative)


def _first_only(ctx: VJPContext, grad: str) -> list[str | None]:
    """``grad`` for input 0; the other inputs (attributes-as-inputs such as bounds or ratios) get none."""
    return [grad, *[None] * (len(ctx.inputs) - 1)]


def _is_float(ctx: VJPContext, name: str) -> bool:
    """Whether ``name`` holds floating-point values."""
    return helper.np_dtype_to_tensor_dtype(ctx.dtype(name)) in _FLOAT_TYPES


def _per_input(ctx: VJPContext, full_grad: Callable[[int], str]) -> list[str | None]:
    """``x̄ᵢ = unbroadcast(full_grad(i))`` for each input that needs a gradient (``full_grad`` is output-shaped)."""
    return [
        ctx.unbroadcast(full_grad(i), name, ctx.output()) if ctx.needs(i) else None for i, name in enumerate(ctx.inputs)
    ]


def _elu_like(ctx: VJPContext, scale: float, alpha: float) -> list[str | None]:
    """``x̄ = ḡ · scale`` where ``x > 0``, else ``ḡ · (y + scale·α)`` (``y = scale·α(eˣ − 1)`` there)."""
    g, y = ctx.grad(), ctx.output()
    negative = ctx.emit("Mul", g, ctx.emit("Add", y, ctx.const(scale * alpha, like=y)))
    return [_split_at_zero(ctx, ctx.emit("Mul", g, ctx.const(scale, like=y)), negative)]


def _float_exponent(ctx: VJPContext) -> str:
    """The exponent of ``Pow`` as a tensor of the base's element type."""
    base, exponent = ctx.input(0), ctx.input(1)
    value = ctx.optional_constant(1)
    if value is not None:
        return ctx.const(value, like=base)
    if ctx.dtype(exponent) == ctx.dtype(base):
        return exponent
    return ctx.emit("Cast", exponent, to=helper.np_dtype_to_tensor_dtype(ctx.dtype(base)))


# -- activations -------------------------------------------------------------------------------------------------------
@rule("LeakyRelu")
def leaky_relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` where ``x > 0``, else ``α·ḡ``."""
    g = ctx.grad()
    return [_split_at_zero(ctx, g, ctx.emit("Mul", g, ctx.const(float(ctx.attr("alpha", 0.01)), like=g)))]


@rule("PRelu")
def prelu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` where ``x > 0``, else ``slope·ḡ`` (``slope`` broadcasts to ``x``; it gets no gradient)."""
    if ctx.needs(1):
        ctx.fail("the gradient w.r.t. the slope is not supported")
    g = ctx.grad()
    return _first_only(ctx, _split_at_zero(ctx, g, ctx.emit("Mul", g, ctx.input(1))))


@rule("Clip")
def clip(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [min < x < max]`` (absent bounds are unbounded; the bounds get no gradient)."""
    if ctx.needs(1) or ctx.needs(2):
        ctx.fail("the gradient w.r.t. min/max is not supported")
    x, g = ctx.input(0), ctx.grad()
    bounds = (("Greater", ctx.input(1)), ("Less", ctx.input(2)))
    masks = [ctx.emit(op, x, bound) for op, bound in bounds if bound]
    if masks:
        inside = masks[0] if len(masks) == 1 else ctx.emit("And", *masks)
        g = ctx.emit("Where", inside, g, ctx.const(0.0, like=x))
    return _first_only(ctx, g)


@rule("Sigmoid")
def sigmoid(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · y(1 − y)`` with ``y = σ(x)``."""
    y = ctx.output()
    return _scaled(ctx, ctx.emit("Mul", y, ctx.emit("Sub", ctx.const(1.0, like=y), y)))


@rule("HardSigmoid")
def hard_sigmoid(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · α · [0 < y < 1]`` with ``y = max(0, min(1, αx + β))``."""
    y = ctx.output()
    inside = ctx.emit(
        "And", ctx.emit("Greater", y, ctx.const(0.0, like=y)), ctx.emit("Less", y, ctx.const(1.0, like=y))
    )
    slope = ctx.emit("Where", inside, ctx.const(float(ctx.attr("alpha", 0.2)), like=y), ctx.const(0.0, like=y))
    return _scaled(ctx, slope)


@rule("HardSwish")
def hard_swish(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · (0 if x ≤ −3, x/3 + ½ if x < 3, else 1)``."""
    x = ctx.input(0)
    zero, one = ctx.const(0.0, like=x), ctx.const(1.0, like=x)
    ramp = ctx.emit("Add", ctx.emit("Div", x, ctx.const(3.0, like=x)), ctx.const(0.5, like=x))
    below_top = ctx.emit("Where", ctx.emit("Less", x, ctx.const(3.0, like=x)), ramp, one)
    return _scaled(ctx, ctx.emit("Where", ctx.emit("LessOrEqual", x, ctx.const(-3.0, like=x)), zero, below_top))


@rule("Tanh")
def tanh(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · (1 − y²)`` with ``y = tanh(x)``."""
    y = ctx.output()
    return _scaled(ctx, ctx.emit("Sub", ctx.const(1.0, like=y), ctx.emit("Mul", y, y)))


@rule("Erf")
def erf(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · 2/√π · exp(−x²)``."""
    x = ctx.input(0)
    gauss = ctx.emit("Exp", ctx.emit("Neg", ctx.emit("Mul", x, x)))
    return _scaled(ctx, ctx.emit("Mul", gauss, ctx.const(2.0 / math.sqrt(math.pi), like=x)))


@rule("Elu")
def elu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` where ``x > 0``, else ``ḡ · (y + α)`` (``= ḡ · α eˣ``)."""
    return _elu_like(ctx, 1.0, float(ctx.attr("alpha", 1.0)))


@rule("Selu")
def selu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · γ`` where ``x > 0``, else ``ḡ · (y + γα)`` (``= ḡ · γα eˣ``)."""
    return _elu_like(
        ctx, float(ctx.attr("gamma", 1.05070102214813232421875)), float(ctx.attr("alpha", 1.67326319217681884765625))
    )


@rule("Softplus")
def softplus(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · σ(x)``."""
    return _scaled(ctx, ctx.emit("Sigmoid", ctx.input(0)))


@rule("Celu")
def celu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` where ``x > 0``, else ``ḡ · (y/α + 1)`` (``= ḡ · e^(x/α)``)."""
    g, y = ctx.grad(), ctx.output()
    alpha = float(ctx.attr("alpha", 1.0))  # type: ignore[arg-type]
    negative = ctx.emit("Mul", g, ctx.emit("Add", ctx.emit("Div", y, ctx.const(alpha, like=y)), ctx.const(1.0, like=y)))
    return [_split_at_zero(ctx, g, negative)]


@rule("Mish")
def mish(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · (t + x·σ(x)·(1 − t²))`` with ``t = tanh(softplus(x))`` (Misra 2019)."""
    x = ctx.input(0)
    t = ctx.emit("Tanh", ctx.emit("Softplus", x))
    slope = ctx.emit(
        "Mul",
        ctx.emit("Mul", x, ctx.emit("Sigmoid", x)),
        ctx.emit("Sub", ctx.const(1.0, like=x), ctx.emit("Mul", t, t)),
    )
    return _scaled(ctx, ctx.emit("Add", t, slope))


@rule("Gelu")
def gelu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · (Φ(x) + x·φ(x))`` (exact), or for ``approximate='tanh'`` with ``u = √(2/π)(x + 0.044715x³)``,
    ``t = tanh(u)``: ``x̄ = ḡ · (½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²))`` (Hendrycks & Gimpel 2016)."""
    x = ctx.input(0)
    half, one = ctx.const(0.5, like=x), ctx.const(1.0, like=x)
    square = ctx.emit("Mul", x, x)
    if ctx.attr("approximate", "none") == "tanh":
        c = math.sqrt(2.0 / math.pi)
        cube_term = ctx.emit("Mul", square, ctx.const(0.044715, like=x))
        t = ctx.emit("Tanh", ctx.emit("Mul", ctx.emit("Mul", x, ctx.emit("Add", one, cube_term)), ctx.const(c, like=x)))
        du = ctx.emit(
            "Mul", ctx.emit("Add", one, ctx.emit("Mul", cube_term, ctx.const(3.0, like=x))), ctx.const(c, like=x)
        )
        inner = ctx.emit("Mul", ctx.emit("Mul", x, ctx.emit("Sub", one, ctx.emit("Mul", t, t))), du)
        return _scaled(ctx, ctx.emit("Mul", half, ctx.emit("Add", ctx.emit("Add", one, t), inner)))
    cdf = ctx.emit(
        "Mul", half, ctx.emit("Add", one, ctx.emit("Erf", ctx.emit("Mul", x, ctx.const(math.sqrt(0.5), like=x))))
    )
    pdf = ctx.emit(
        "Mul",
        ctx.emit("Exp", ctx.emit("Mul", square, ctx.const(-0.5, like=x))),
        ctx.const(1.0 / math.sqrt(2.0 * math.pi), like=x),
    )
    return _scaled(ctx, ctx.emit("Add", cdf, ctx.emit("Mul", x, pdf)))


@rule("Swish")
def swish(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · (s + αx·s(1 − s))`` with ``s = σ(αx)``."""
    x = ctx.input(0)
    ax = ctx.emit("Mul", x, ctx.const(float(ctx.attr("alpha", 1.0)), like=x))  # type: ignore[arg-type]
    s = ctx.emit("Sigmoid", ax)
    return _scaled(
        ctx, ctx.emit("Add", s, ctx.emit("Mul", ax, ctx.emit("Mul", s, ctx.emit("Sub", ctx.const(1.0, like=x), s))))
    )


@rule("Softsign")
def softsign(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ / (1 + |x|)²``."""
    x = ctx.input(0)
    denominator = ctx.emit("Add", ctx.const(1.0, like=x), ctx.emit("Abs", x))
    return [ctx.emit("Div", ctx.grad(), ctx.emit("Mul", denominator, denominator))]


def _masked(ctx: VJPContext, mask: str) -> list[str | None]:
    """``x̄ = ḡ`` where ``mask``, else 0."""
    return [ctx.emit("Where", mask, ctx.grad(), ctx.const(0.0, like=ctx.input(0)))]


@rule("ThresholdedRelu")
def thresholded_relu(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [x > α]`` (as ``torch.nn.functional.threshold``)."""
    x = ctx.input(0)
    return _masked(ctx, ctx.emit("Greater", x, ctx.const(float(ctx.attr("alpha", 1.0)), like=x)))  # type: ignore[arg-type]


@rule("Shrink")
def shrink(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · [|x| > λ]`` (the bias only shifts; ``|x| = λ`` gets 0, as torch's hard/soft shrink)."""
    x = ctx.input(0)
    return _masked(ctx, ctx.emit("Greater", ctx.emit("Abs", x), ctx.const(float(ctx.attr("lambd", 0.5)), like=x)))  # type: ignore[arg-type]


@rule("Softmax")
def softmax(ctx: VJPContext) -> list[str | None]:
    """``x̄ = y ⊙ (ḡ − Σ_axis ḡ ⊙ y)`` (opset-13 single-axis semantics)."""
    g, y = ctx.grad(), ctx.output()
    dot = ctx.emit("ReduceSum", ctx.emit("Mul", g, y), ctx.const([int(ctx.attr("axis", -1))]), keepdims=1)
    return [ctx.emit("Mul", y, ctx.emit("Sub", g, dot))]


@rule("LogSoftmax")
def log_softmax(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ − exp(y) ⊙ Σ_axis ḡ`` (opset-13 single-axis semantics)."""
    g, y = ctx.grad(), ctx.output()
    total = ctx.emit("ReduceSum", g, ctx.const([int(ctx.attr("axis", -1))]), keepdims=1)
    return [ctx.emit("Sub", g, ctx.emit("Mul", ctx.emit("Exp", y), total))]


# -- unary math --------------------------------------------------------------------------------------------------------
@rule("Exp")
def exp(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · y`` with ``y = eˣ``."""
    return _scaled(ctx, ctx.output())


@rule("Log")
def log(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ / x``."""
    return [ctx.emit("Div", ctx.grad(), ctx.input(0))]


@rule("Sqrt")
def sqrt(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ / (2y)`` with ``y = √x``."""
    y = ctx.output()
    return [ctx.emit("Div", ctx.grad(), ctx.emit("Mul", y, ctx.const(2.0, like=y)))]


@rule("Reciprocal")
def reciprocal(ctx: VJPContext) -> list[str | None]:
    """``x̄ = −ḡ · y²`` with ``y = 1/x``."""
    y = ctx.output()
    return [ctx.emit("Neg", ctx.emit("Mul", ctx.grad(), ctx.emit("Mul", y, y)))]


@rule("Neg")
def neg(ctx: VJPContext) -> list[str | None]:
    """``x̄ = −ḡ``."""
    return [ctx.emit("Neg", ctx.grad())]


@rule("Abs")
def abs_(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · sign(x)`` (``sign(0) = 0``)."""
    return _scaled(ctx, ctx.emit("Sign", ctx.input(0)))


@rule("Sign")
def sign(ctx: VJPContext) -> list[str | None]:
    """``x̄ = 0`` (a step function; torch's convention at 0 too). It appears as ``sign(y)·|y|`` factorisations, e.g.
    ``LPPool2d``, whose other factor carries the gradient."""
    return [ctx.zeros_like(ctx.input(0))]


def _unary(derivative: Callable[[VJPContext, str, str], str]) -> Callable[[VJPContext], list[str | None]]:
    """A rule ``x̄ = ḡ · derivative(ctx, x, y)``."""
    return lambda ctx: _scaled(ctx, derivative(ctx, ctx.input(0), ctx.output()))


def _inverse_root(ctx: VJPContext, x: str, sign: float, offset: float) -> str:
    """``1 / √(offset + sign·x²)``."""
    square = ctx.emit("Mul", ctx.emit("Mul", x, x), ctx.const(sign, like=x))
    return ctx.emit("Reciprocal", ctx.emit("Sqrt", ctx.emit("Add", square, ctx.const(offset, like=x))))


def _one_plus(ctx: VJPContext, x: str, sign: float) -> str:
    """``1 + sign·x²``."""
    return ctx.emit("Add", ctx.const(1.0, like=x), ctx.emit("Mul", ctx.emit("Mul", x, x), ctx.const(sign, like=x)))


# d/dx of each trigonometric / hyperbolic op, from x and y.
_TRIG: dict[str, Callable[[VJPContext, str, str], str]] = {
    "Sin": lambda ctx, x, y: ctx.emit("Cos", x),
    "Cos": lambda ctx, x, y: ctx.emit("Neg", ctx.emit("Sin", x)),
    "Tan": lambda ctx, x, y: _one_plus(ctx, y, 1.0),
    "Asin": lambda ctx, x, y: _inverse_root(ctx, x, -1.0, 1.0),
    "Acos": lambda ctx, x, y: ctx.emit("Neg", _inverse_root(ctx, x, -1.0, 1.0)),
    "Atan": lambda ctx, x, y: ctx.emit("Reciprocal", _one_plus(ctx, x, 1.0)),
    "Sinh": lambda ctx, x, y: ctx.emit("Cosh", x),
    "Cosh": lambda ctx, x, y: ctx.emit("Sinh", x),
    "Asinh": lambda ctx, x, y: _inverse_root(ctx, x, 1.0, 1.0),
    "Acosh": lambda ctx, x, y: _inverse_root(ctx, x, 1.0, -1.0),
    "Atanh": lambda ctx, x, y: ctx.emit("Reciprocal", _one_plus(ctx, x, -1.0)),
}
for _op, _derivative in _TRIG.items():
    rule(_op)(_unary(_derivative))


@rule("Pow")
def pow_(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ · p · x^(p−1)``, ``p̄ = ḡ · y · ln x`` for ``y = x^p`` (both unbroadcast)."""
    g, base, y = ctx.grad(), ctx.input(0), ctx.output()
    if ctx.needs(1) and not _is_float(ctx, ctx.input(1)):
        ctx.fail("an integer exponent has no gradient")

    def full(i: int) -> str:
        if i == 1:
            return ctx.emit("Mul", ctx.emit("Mul", g, y), ctx.emit("Log", base))
        p = _float_exponent(ctx)
        power = ctx.emit("Pow", base, ctx.emit("Sub", p, ctx.const(1.0, like=base)))
        return ctx.emit("Mul", ctx.emit("Mul", g, p), power)

    return _per_input(ctx, full)


# -- arithmetic (multidirectional broadcasting) ------------------------------------------------------------------------
@rule("Add", "Sum")
def add(ctx: VJPContext) -> list[str | None]:
    """``x̄ᵢ = unbroadcast(ḡ)`` for every operand."""
    return _per_input(ctx, lambda i: ctx.grad())


@rule("Mean")
def mean(ctx: VJPContext) -> list[str | None]:
    """``x̄ᵢ = unbroadcast(ḡ / n)`` for ``n`` operands."""
    share = ctx.emit("Div", ctx.grad(), ctx.const(float(len(ctx.inputs)), like=ctx.output()))
    return _per_input(ctx, lambda i: share)


@rule("Sub")
def sub(ctx: VJPContext) -> list[str | None]:
    """``ā = unbroadcast(ḡ)``, ``b̄ = unbroadcast(−ḡ)``."""
    return _per_input(ctx, lambda i: ctx.grad() if i == 0 else ctx.emit("Neg", ctx.grad()))


@rule("Mul")
def mul(ctx: VJPContext) -> list[str | None]:
    """``ā = unbroadcast(ḡ · b)``, ``b̄ = unbroadcast(ḡ · a)``."""
    return _per_input(ctx, lambda i: ctx.emit("Mul", ctx.grad(), ctx.input(1 - i)))


@rule("Div")
def div(ctx: VJPContext) -> list[str | None]:
    """``ā = unbroadcast(ḡ / b)``, ``b̄ = unbroadcast(−(ḡ / b) · y)`` with ``y = a / b``."""
    g_over_b = ctx.emit("Div", ctx.grad(), ctx.input(1))
    return _per_input(ctx, lambda i: g_over_b if i == 0 else ctx.emit("Neg", ctx.emit("Mul", g_over_b, ctx.output())))


@rule("Mod")
def mod(ctx: VJPContext) -> list[str | None]:
    """Float ``Mod`` (``fmod=1``: ``y = a − b·trunc(a/b)``): ``ā = unbroadcast(ḡ)``, ``b̄ = unbroadcast(−ḡ·(a − y)/b)``
    (``(a − y)/b = trunc(a/b)``, piecewise constant, as torch's ``fmod``)."""
    if not int(ctx.attr("fmod", 0)):  # type: ignore[call-overload]
        ctx.fail("only the float form (fmod=1) has a gradient")
    a, b, g = ctx.input(0), ctx.input(1), ctx.grad()

    def full(i: int) -> str:
        if i == 0:
            return g
        quotient = ctx.emit("Div", ctx.emit("Sub", a, ctx.output()), b)
        return ctx.emit("Neg", ctx.emit("Mul", g, quotient))

    return _per_input(ctx, full)


@rule("Max", "Min")
def extremum(ctx: VJPContext) -> list[str | None]:
    """``x̄ᵢ = unbroadcast(ḡ · [xᵢ = y] / Σⱼ [xⱼ = y])``: ties share the gradient equally (as ``torch.maximum``)."""
    y = ctx.output()
    to = helper.np_dtype_to_tensor_dtype(ctx.dtype(y))
    hits = [ctx.emit("Cast", ctx.emit("Equal", name, y), to=to) for name in ctx.inputs]
    share = ctx.emit("Div", ctx.grad(), ctx.emit("Sum", *hits) if len(hits) > 1 else hits[0])
    return _per_input(ctx, lambda i: ctx.emit("Mul", share, hits[i]))


@rule("Where")
def where(ctx: VJPContext) -> list[str | None]:
    """``x̄ = unbroadcast(ḡ · [c])``, ``ȳ = unbroadcast(ḡ · [¬c])``; the boolean condition gets none."""
    if ctx.needs(0):
        ctx.fail("the condition is boolean and has no gradient")
    cond, g = ctx.input(0), ctx.grad()
    zero = ctx.const(0.0, like=g)
    return _per_input(ctx, lambda i: ctx.emit("Where", cond, g, zero) if i == 1 else ctx.emit("Where", cond, zero, g))


# -- pass-through ------------------------------------------------------------------------------------------------------
@rule("Identity")
def identity(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ``."""
    return [ctx.grad()]


@rule("Dropout")
def dropout(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ`` (inference mode: dropout is the identity; the mask output carries no gradient)."""
    training = ctx.optional_constant(2)
    if ctx.input(2) and (training is None or bool(np.asarray(training).item())):
        ctx.fail("only inference-mode Dropout (training_mode absent or constant false) is differentiable")
    return _first_only(ctx, ctx.grad())


@rule("Cast", "CastLike")
def cast(ctx: VJPContext) -> list[str | None]:
    """``x̄ = cast(ḡ, dtype(x))`` for a float-to-float cast (``CastLike``'s type operand only gives a type: 0)."""
    source = helper.np_dtype_to_tensor_dtype(ctx.dtype(ctx.input(0)))
    like = ctx.input(1) if ctx.node.op_type == "CastLike" else None
    target = helper.np_dtype_to_tensor_dtype(ctx.dtype(like)) if like else int(ctx.attr("to"))  # type: ignore[call-overload]
    if source not in _FLOAT_TYPES or target not in _FLOAT_TYPES:
        ctx.fail(
            f"only float-to-float casts are differentiable, got {TensorProto.DataType.Name(source)} → "
            f"{TensorProto.DataType.Name(target)}"
        )
    grad = ctx.emit("Cast", ctx.grad(), to=source)
    return [grad, ctx.zeros_like(ctx.input(1))] if ctx.needs(1) else _first_only(ctx, grad)
