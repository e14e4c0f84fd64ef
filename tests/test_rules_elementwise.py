"""Element-wise VJP rules vs torch autograd (float32, relative tolerance 1e-5)."""

from collections.abc import Callable

import gradcheck
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp, run_vjp
from onnx import TensorProto, helper
from onnxcam_export.autodiff.context import GradientError
from onnxcam_export.autodiff.registry import supported_ops

RNG = np.random.default_rng(0)
SHAPE = (2, 3, 4, 5)
# Right-hand operand shapes broadcast against SHAPE (and one that broadcasts the left operand instead).
BROADCAST_PAIRS = [
    (SHAPE, SHAPE),
    (SHAPE, (3, 1, 1)),
    (SHAPE, (1,)),
    (SHAPE, ()),
    ((3, 1, 1), SHAPE),
    ((2, 1, 4, 1), (1, 3, 1, 5)),
]


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def with_ties(array: np.ndarray, *values: float) -> np.ndarray:
    """``array`` with its first entries set exactly to ``values`` (the kinks of a piecewise op)."""
    flat = array.copy().reshape(-1)
    flat[: len(values)] = values
    return flat.reshape(array.shape)


def away_from_zero(*shape: int, margin: float = 0.5) -> np.ndarray:
    """Random values with ``|v| ≥ margin`` (denominators)."""
    v = x(*shape)
    return np.asarray(np.sign(v) * (np.abs(v) + margin), np.float32)


def positive(*shape: int) -> np.ndarray:
    return np.asarray(np.abs(x(*shape)) + 0.1, np.float32)


def node(op: str, inputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, ["y"], **attrs)


def test_relu() -> None:
    check_vjp(helper.make_node("Relu", ["x"], ["y"]), {"x": x(2, 3, 4, 5)}, ["x"], torch.relu)


# -- unary ops: (op, attributes, input, torch reference) -----------------------------------------------------------
UNARY = [
    ("LeakyRelu", {}, with_ties(x(*SHAPE), 0.0), lambda t: F.leaky_relu(t, 0.01)),
    ("LeakyRelu", {"alpha": 0.2}, with_ties(x(*SHAPE), 0.0), lambda t: F.leaky_relu(t, 0.2)),
    ("Sigmoid", {}, 3 * x(*SHAPE), torch.sigmoid),
    ("HardSigmoid", {}, 4 * x(*SHAPE), lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, 4 * x(*SHAPE), F.hardsigmoid),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.25}, 4 * x(*SHAPE), lambda t: torch.clamp(0.5 * t + 0.25, 0, 1)),
    ("HardSwish", {}, with_ties(4 * x(*SHAPE), -3.0, 3.0, 0.0), F.hardswish),
    ("Tanh", {}, 2 * x(*SHAPE), torch.tanh),
    ("Erf", {}, 2 * x(*SHAPE), torch.erf),
    ("Elu", {}, with_ties(2 * x(*SHAPE), 0.0), F.elu),
    ("Elu", {"alpha": 0.5}, with_ties(2 * x(*SHAPE), 0.0), lambda t: F.elu(t, 0.5)),
    ("Selu", {}, with_ties(2 * x(*SHAPE), 0.0), F.selu),
    ("Softplus", {}, 8 * x(*SHAPE), F.softplus),
    ("Exp", {}, x(*SHAPE), torch.exp),
    ("Log", {}, positive(*SHAPE), torch.log),
    ("Sqrt", {}, positive(*SHAPE), torch.sqrt),
    ("Reciprocal", {}, away_from_zero(*SHAPE), torch.reciprocal),
    ("Neg", {}, x(*SHAPE), torch.neg),
    ("Abs", {}, with_ties(x(*SHAPE), 0.0), torch.abs),
    ("Identity", {}, x(*SHAPE), lambda t: t * 1),
    ("Softmax", {}, 2 * x(*SHAPE), lambda t: torch.softmax(t, -1)),
    ("Softmax", {"axis": 1}, 2 * x(*SHAPE), lambda t: torch.softmax(t, 1)),
    ("Softmax", {"axis": -3}, 2 * x(*SHAPE), lambda t: torch.softmax(t, -3)),
    ("Softmax", {"axis": 0}, 2 * x(*SHAPE), lambda t: torch.softmax(t, 0)),
    ("LogSoftmax", {}, 2 * x(*SHAPE), lambda t: torch.log_softmax(t, -1)),
    ("LogSoftmax", {"axis": 1}, 2 * x(*SHAPE), lambda t: torch.log_softmax(t, 1)),
    ("LogSoftmax", {"axis": -2}, 2 * x(*SHAPE), lambda t: torch.log_softmax(t, -2)),
]


@pytest.mark.parametrize(("op", "attrs", "value", "torch_fn"), UNARY, ids=[f"{u[0]}-{u[1]}" for u in UNARY])
def test_unary(op: str, attrs: dict, value: np.ndarray, torch_fn: Callable[..., torch.Tensor]) -> None:
    check_vjp(node(op, ["x"], **attrs), {"x": value}, ["x"], torch_fn)


# -- PRelu / Clip / Dropout / Cast: extra inputs that never get gradients ----------------------------------------------
@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (5,), ()])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    slope = (0.3 * x(*slope_shape)).astype(np.float32)
    s = torch.tensor(slope)
    check_vjp(
        node("PRelu", ["x", "slope"]),
        {"x": with_ties(x(*SHAPE), 0.0)},
        ["x"],
        lambda t: torch.where(t > 0, t, t * s),
        constants={"slope": slope},
    )


def test_prelu_matches_torch_prelu_per_channel() -> None:
    slope = np.array([0.1, 0.25, -0.5], dtype=np.float32)
    check_vjp(
        node("PRelu", ["x", "slope"]),
        {"x": x(*SHAPE)},
        ["x"],
        lambda t: F.prelu(t, torch.tensor(slope)),
        constants={"slope": slope.reshape(3, 1, 1)},
    )


def test_prelu_slope_gradient_fails() -> None:
    with pytest.raises(GradientError, match="slope"):
        run_vjp(
            [node("PRelu", ["x", "slope"])],
            {"x": x(*SHAPE), "slope": x(3, 1, 1)},
            ["x", "slope"],
            "y",
            x(*SHAPE),
        )


@pytest.mark.parametrize(("low", "high"), [(-0.5, 0.7), (0.0, 6.0), (-0.5, None), (None, 0.7), (None, None)], ids=str)
def test_clip_constant_bounds(low: float | None, high: float | None) -> None:
    # Values exactly on a bound get no gradient (torch.clamp's convention for scalar bounds, as for Relu at 0).
    value = with_ties(4 * x(*SHAPE), *[b for b in (low, high) if b is not None])
    bounds = {"lo": np.array(low, np.float32), "hi": np.array(high, np.float32)}
    names = ["lo" if low is not None else "", "hi" if high is not None else ""]
    while names and not names[-1]:
        names.pop()
    check_vjp(
        node("Clip", ["x", *names]),
        {"x": value},
        ["x"],
        (lambda t: t * 1) if low is None and high is None else (lambda t: torch.clamp(t, low, high)),
        constants={k: v for k, v in bounds.items() if k in names},
    )


def test_clip_runtime_bounds() -> None:
    check_vjp(
        node("Clip", ["x", "lo", "hi"]),
        {"x": 2 * x(*SHAPE), "lo": np.array(-1.0, np.float32), "hi": np.array(0.5, np.float32)},
        ["x"],
        torch.clamp,
    )


def test_relu6_as_clip() -> None:
    check_vjp(
        node("Clip", ["x", "lo", "hi"]),
        {"x": 5 * x(*SHAPE)},
        ["x"],
        F.relu6,
        constants={"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
    )


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("training", [None, False])
def test_dropout_inference(with_mask: bool, training: bool | None) -> None:
    constants = {"ratio": np.array(0.3, np.float32)}
    inputs = ["x", "ratio"]
    if training is not None:
        constants["training"] = np.array(training)
        inputs.append("training")
    outputs = ["y", "mask"] if with_mask else ["y"]
    dropout = helper.make_node("Dropout", inputs, outputs)
    check_vjp(dropout, {"x": x(*SHAPE)}, ["x"], lambda t: F.dropout(t, 0.3, training=False), constants=constants)


def test_dropout_training_fails() -> None:
    with pytest.raises(GradientError, match="inference"):
        run_vjp(
            [node("Dropout", ["x", "ratio", "training"])],
            {"x": x(*SHAPE)},
            ["x"],
            "y",
            x(*SHAPE),
            constants={"ratio": np.array(0.3, np.float32), "training": np.array(True)},
        )


@pytest.mark.parametrize(
    ("source", "target", "torch_dtype"),
    [
        (np.float32, TensorProto.DOUBLE, torch.float64),
        (np.float64, TensorProto.FLOAT, torch.float32),
        (np.float32, TensorProto.FLOAT16, torch.float16),
        (np.float32, TensorProto.FLOAT, torch.float32),
    ],
)
def test_cast_float(source: type, target: int, torch_dtype: torch.dtype) -> None:
    value = x(*SHAPE).astype(source)
    check_vjp(node("Cast", ["x"], to=target), {"x": value}, ["x"], lambda t: t.to(torch_dtype))


def test_cast_to_int_blocks_the_gradient() -> None:
    """An integer tensor carries no gradient: a source reaching the output only through it is reported."""
    with pytest.raises(GradientError, match="does not influence"):
        run_vjp(
            [node("Cast", ["x"], to=TensorProto.INT64), helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT)],
            {"x": x(*SHAPE)},
            ["x"],
            "z",
            x(*SHAPE),
        )


# -- Pow -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exponent", "base"),
    [
        (np.array(2.0, np.float32), x(*SHAPE)),
        (np.array(3, np.int64), x(*SHAPE)),
        (np.array(0.5, np.float32), positive(*SHAPE)),
        (np.array(-1.5, np.float32), positive(*SHAPE)),
        (np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1), x(*SHAPE)),
    ],
    ids=["square", "int-cube", "sqrt", "negative", "per-channel"],
)
def test_pow_constant_exponent(exponent: np.ndarray, base: np.ndarray) -> None:
    p = torch.tensor(exponent)
    check_vjp(node("Pow", ["x", "p"]), {"x": base}, ["x"], lambda t: torch.pow(t, p), constants={"p": exponent})


@pytest.mark.parametrize(
    ("base_shape", "exponent_shape"), [s for s in BROADCAST_PAIRS if s[0] == SHAPE or s[1] == SHAPE]
)
@pytest.mark.parametrize("wrt", [["x", "p"], ["x"], ["p"]], ids="+".join)
def test_pow_tensor_exponent(base_shape: tuple, exponent_shape: tuple, wrt: list[str]) -> None:
    inputs = {"x": positive(*base_shape), "p": np.asarray(1.5 * x(*exponent_shape), np.float32)}
    check_vjp(node("Pow", ["x", "p"]), inputs, wrt, torch.pow)


# -- binary arithmetic with broadcasting -----------------------------------------------------------------------------
BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("wrt", [["a", "b"], ["a"], ["b"]], ids="+".join)
def test_binary(op: str, a_shape: tuple, b_shape: tuple, wrt: list[str]) -> None:
    inputs = {"a": x(*a_shape), "b": away_from_zero(*b_shape) if op == "Div" else x(*b_shape)}
    check_vjp(node(op, ["a", "b"]), inputs, wrt, BINARY[op])


def test_mul_same_tensor_twice() -> None:
    check_vjp(node("Mul", ["a", "a"]), {"a": x(*SHAPE)}, ["a"], lambda t: t * t)


@pytest.mark.parametrize("shapes", [[SHAPE], [SHAPE, (3, 1, 1)], [SHAPE, (3, 1, 1), (1,), ()]], ids=str)
def test_sum(shapes: list[tuple[int, ...]]) -> None:
    inputs = {f"x{i}": x(*s) for i, s in enumerate(shapes)}
    check_vjp(node("Sum", list(inputs)), inputs, list(inputs), lambda *ts: sum(ts[1:], ts[0]))


# -- Max / Min: ties share the gradient ------------------------------------------------------------------------------
EXTREMA = {"Max": (torch.maximum, torch.amax), "Min": (torch.minimum, torch.amin)}


@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("op", list(EXTREMA))
def test_extremum_pair_with_ties(op: str, a_shape: tuple, b_shape: tuple) -> None:
    a, b = x(*a_shape), x(*b_shape)
    # Copy part of b into a (where a is at least as large) so that some outputs are ties.
    out_shape = np.broadcast_shapes(a_shape, b_shape)
    if a.shape == out_shape:
        a = np.where(RNG.random(out_shape) < 0.3, np.broadcast_to(b, out_shape), a).astype(np.float32)
    elif b.shape == out_shape:
        b = np.where(RNG.random(out_shape) < 0.3, np.broadcast_to(a, out_shape), b).astype(np.float32)
    else:
        a.reshape(-1)[0] = b.reshape(-1)[0]
    check_vjp(node(op, ["a", "b"]), {"a": a, "b": b}, ["a", "b"], EXTREMA[op][0])


@pytest.mark.parametrize("op", list(EXTREMA))
def test_extremum_variadic_with_ties(op: str) -> None:
    a, b = x(*SHAPE), x(3, 1, 1)
    c = b[0, 0].copy()  # ties with b over channel 0
    a[0, 0].reshape(-1)[:10] = b[0, 0, 0]  # three-way ties
    a[1, 1].reshape(-1)[:5] = b[1, 0, 0]  # a/b ties
    inputs = {"a": a, "b": b, "c": c}
    amax = EXTREMA[op][1]
    check_vjp(
        node(op, ["a", "b", "c"]),
        inputs,
        ["a", "b", "c"],
        lambda *ts: amax(torch.stack(torch.broadcast_tensors(*ts)), 0),
    )


def test_max_single_input() -> None:
    check_vjp(node("Max", ["a"]), {"a": x(*SHAPE)}, ["a"], lambda t: t * 1)


# -- Where -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond_shape", "x_shape", "y_shape"),
    [(SHAPE, SHAPE, SHAPE), ((1, 4, 5), SHAPE, (3, 1, 1)), (SHAPE, (1,), ()), ((4, 1), (3, 1, 5), (2, 1, 1, 1))],
    ids=str,
)
@pytest.mark.parametrize("wrt", [["x", "y"], ["x"], ["y"]], ids="+".join)
def test_where(cond_shape: tuple, x_shape: tuple, y_shape: tuple, wrt: list[str]) -> None:
    inputs = {"c": RNG.random(cond_shape) < 0.5, "x": x(*x_shape), "y": x(*y_shape)}
    check_vjp(helper.make_node("Where", ["c", "x", "y"], ["out"]), inputs, wrt, torch.where)


def test_where_condition_gets_no_gradient() -> None:
    """The boolean condition is a constant to the backward pass: nothing flows from ``out`` back to ``c0``."""
    with pytest.raises(GradientError, match="does not influence"):
        run_vjp(
            [helper.make_node("Greater", ["c0", "zero"], ["c"]), helper.make_node("Where", ["c", "x", "y"], ["out"])],
            {"c0": x(*SHAPE), "x": x(*SHAPE), "y": x(*SHAPE)},
            ["c0"],
            "out",
            x(*SHAPE),
            constants={"zero": np.array(0.0, np.float32)},
        )


# -- composite graphs --------------------------------------------------------------------------------------------------
def test_silu_accumulates_two_paths() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    check_vjp(nodes, {"x": 3 * x(*SHAPE)}, ["x"], F.silu)


@pytest.mark.skipif("ReduceMean" not in supported_ops(), reason="needs the ReduceMean rule (rules/reduce.py)")
def test_squeeze_excitation_scale() -> None:
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=1),
        helper.make_node("Sigmoid", ["pooled"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    check_vjp(
        nodes,
        {"x": x(*SHAPE)},
        ["x"],
        lambda t: t * torch.sigmoid(t.mean((2, 3), keepdim=True)),
        constants={"axes": np.array([2, 3], np.int64)},
    )


def test_gelu_erf_decomposition() -> None:
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["shifted"]),
        helper.make_node("Mul", ["x", "shifted"], ["prod"]),
        helper.make_node("Mul", ["prod", "half"], ["y"]),
    ]
    constants = {
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    check_vjp(nodes, {"x": 3 * x(*SHAPE)}, ["x"], F.gelu, constants=constants)


# -- more activations and unary math: (op, attributes, opset, input, torch reference) -------------------------------
MORE_RNG = np.random.default_rng(1)  # its own stream: the values the tests above draw stay as they were


def y(*shape: int) -> np.ndarray:
    return MORE_RNG.standard_normal(shape).astype(np.float32)


def bounded(*shape: int, limit: float = 0.9) -> np.ndarray:
    """Random values in ``(−limit, limit)`` (domains of asin/acos/atanh)."""
    return MORE_RNG.uniform(-limit, limit, shape).astype(np.float32)


MORE_UNARY = [
    ("Celu", {}, 18, with_ties(2 * y(*SHAPE), 0.0), F.celu),
    ("Celu", {"alpha": 0.5}, 18, 2 * y(*SHAPE), lambda t: F.celu(t, 0.5)),
    ("Mish", {}, 18, 4 * y(*SHAPE), F.mish),
    ("Gelu", {}, 20, 3 * y(*SHAPE), F.gelu),
    ("Gelu", {"approximate": "tanh"}, 20, 3 * y(*SHAPE), lambda t: F.gelu(t, approximate="tanh")),
    ("Swish", {}, 24, 4 * y(*SHAPE), F.silu),
    ("Swish", {"alpha": 1.702}, 24, 4 * y(*SHAPE), lambda t: t * torch.sigmoid(1.702 * t)),
    ("Softsign", {}, 18, with_ties(3 * y(*SHAPE), 0.0), F.softsign),
    ("ThresholdedRelu", {}, 18, with_ties(2 * y(*SHAPE), 1.0), lambda t: F.threshold(t, 1.0, 0.0)),
    ("ThresholdedRelu", {"alpha": -0.5}, 18, with_ties(2 * y(*SHAPE), -0.5), lambda t: F.threshold(t, -0.5, 0.0)),
    ("Shrink", {}, 18, with_ties(2 * y(*SHAPE), 0.5, -0.5), lambda t: F.hardshrink(t, 0.5)),
    ("Shrink", {"lambd": 0.3, "bias": 0.3}, 18, with_ties(2 * y(*SHAPE), 0.3, -0.3), lambda t: F.softshrink(t, 0.3)),
    ("Sign", {}, 18, with_ties(y(*SHAPE), 0.0), torch.sign),
    ("Sin", {}, 18, 3 * y(*SHAPE), torch.sin),
    ("Cos", {}, 18, 3 * y(*SHAPE), torch.cos),
    ("Tan", {}, 18, bounded(*SHAPE, limit=1.2), torch.tan),
    ("Asin", {}, 18, bounded(*SHAPE), torch.asin),
    ("Acos", {}, 18, bounded(*SHAPE), torch.acos),
    ("Atan", {}, 18, 3 * y(*SHAPE), torch.atan),
    ("Sinh", {}, 18, 2 * y(*SHAPE), torch.sinh),
    ("Cosh", {}, 18, 2 * y(*SHAPE), torch.cosh),
    ("Asinh", {}, 18, 3 * y(*SHAPE), torch.asinh),
    ("Acosh", {}, 18, 1.2 + np.abs(y(*SHAPE)), torch.acosh),
    ("Atanh", {}, 18, bounded(*SHAPE), torch.atanh),
]


@pytest.mark.parametrize(
    ("op", "attrs", "opset", "value", "torch_fn"), MORE_UNARY, ids=[f"{u[0]}-{u[1]}" for u in MORE_UNARY]
)
def test_more_unary(
    op: str, attrs: dict, opset: int, value: np.ndarray, torch_fn: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gradcheck, "OPSET", opset)
    check_vjp(node(op, ["x"], **attrs), {"x": value}, ["x"], torch_fn)


@pytest.mark.parametrize("shapes", [[SHAPE], [SHAPE, (3, 1, 1)], [SHAPE, (3, 1, 1), (1,), ()]], ids=str)
def test_mean(shapes: list[tuple[int, ...]]) -> None:
    inputs = {f"x{i}": y(*s) for i, s in enumerate(shapes)}
    check_vjp(node("Mean", list(inputs)), inputs, list(inputs), lambda *ts: sum(ts[1:], ts[0]) / len(ts))


def test_cast_like() -> None:
    check_vjp(
        node("CastLike", ["x", "like"]),
        {"x": y(*SHAPE)},
        ["x"],
        lambda t: t.double(),
        constants={"like": np.zeros(1, np.float64)},
    )


@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCAST_PAIRS[:3], ids=str)
def test_fmod(a_shape: tuple, b_shape: tuple) -> None:
    inputs = {
        "a": 4 * y(*a_shape),
        "b": np.asarray(np.sign(y(*b_shape)) * MORE_RNG.uniform(0.6, 1.5, b_shape), np.float32),
    }
    check_vjp(node("Mod", ["a", "b"], fmod=1), inputs, ["a", "b"], torch.fmod)


def test_integer_mod_is_refused() -> None:
    with pytest.raises(GradientError, match="fmod=1"):
        run_vjp([node("Mod", ["a", "b"])], {"a": y(*SHAPE), "b": y(*SHAPE)}, ["a"], "y", y(*SHAPE))
