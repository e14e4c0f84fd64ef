"""QuantizeLinear → DequantizeLinear VJP (straight-through estimator) vs torch's fake quantization, whose backward is
the STE of quantization-aware training: ``x̄ = ḡ · [q_min ≤ round(x/s) + z ≤ q_max]`` (relative tolerance 1e-6)."""

import numpy as np
import torch
from gradcheck import check_vjp, run_vjp
from onnx import helper

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
