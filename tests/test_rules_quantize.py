"""QuantizeLinear → DequantizeLinear VJP (straight-through estimator) vs torch's fake quantization, whose backward is
the STE of quantization-aware training: ``x̄ = ḡ · [q_min ≤ round(x/s) + z ≤ q_max]`` (relative tolerance 1e-6); a
MaxPool reading dequantized (tied) values vs finite differences of the STE reference's tie-broken pool."""

import numpy as np
import onnx
import torch
from gradcheck import check_vjp, run_vjp
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.float64 import cut_after, evaluate_float64
from onnxcam_export.quantization import break_ties

RNG = np.random.default_rng(0)


def _pair(axis: int | None = None) -> list:
    attrs = {} if axis is None else {"axis": axis}
    return [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs),
    ]


def test_per_tensor_uint8_passes_inside_and_zeroes_clipped() -> None:
    x = (RNG.standard_normal((2, 3, 4, 5)) * 2).astype(np.float32)
    scale, zero = np.array(0.01, np.float32), np.array(128, np.uint8)  # range [-1.28, 1.27]: about half is clipped
    check_vjp(
        _pair(),
        {"x": x},
        ["x"],
        lambda t: torch.fake_quantize_per_tensor_affine(t, 0.01, 128, 0, 255),
        constants={"s": scale, "z": zero},
        tol=1e-6,
    )
    _, (grad,) = run_vjp(_pair(), {"x": x}, ["x"], "y", np.ones_like(x), {"s": scale, "z": zero})
    assert 0.2 < (grad == 0).mean() < 0.8, "the test must cover both clipped and passed values"


def test_per_channel_int8() -> None:
    x = (RNG.standard_normal((2, 3, 4, 5)) * 2).astype(np.float32)
    scale = np.array([0.005, 0.01, 0.02], np.float32)
    zero = np.array([0, 10, -20], np.int8)
    check_vjp(
        _pair(axis=1),
        {"x": x},
        ["x"],
        lambda t: torch.fake_quantize_per_channel_affine(
            t, torch.tensor(scale), torch.tensor(zero, dtype=torch.int32), 1, -128, 127
        ),
        constants={"s": scale, "z": zero},
        tol=1e-6,
    )


def _quantized_pool(scale: float) -> tuple[onnx.ModelProto, list]:
    """``x → QuantizeLinear → DequantizeLinear → a → MaxPool(3×3, stride 2, pad 1) → p``; and the pool alone."""
    pool = helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
        pool,
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 2, 3, 3])],
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "z"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), [pool]


def test_max_pool_after_dequantize_vs_tie_broken_finite_differences() -> None:
    """MaxPool's VJP at quantized ties (first maximum) vs central differences of the STE reference's tie-broken pool
    (:func:`break_ties`, float64): equal to 1e-6 (the VJP runs in float32). Without the tie-break the central
    differences average the tied values' directions and disagree (> 0.1): the ties are there, the check could fail."""
    scale = 0.25
    a = (RNG.integers(0, 3, (1, 2, 6, 6)) * scale).astype(np.float32)  # levels 0, s, 2s: every window ties
    whole, pool = _quantized_pool(scale)
    seed = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    _, (grad,) = run_vjp(pool, {"a": a}, ["a"], "p", seed)
    cut = cut_after(whole, "a", ["p"])[0]
    v = RNG.standard_normal(a.shape)
    eps = 1e-7 * scale

    def central(model: onnx.ModelProto) -> float:
        plus, minus = (evaluate_float64(model, {"a": a + sign * eps * v})["p"] for sign in (1, -1))
        return float(((plus - minus) * seed).sum() / (2 * eps))

    dot = float((grad * v).sum())
    assert abs(central(break_ties(cut, whole)) - dot) <= 1e-6 * abs(dot)  # the VJP runs in float32
    assert abs(central(cut) - dot) > 0.1 * abs(dot)
