"""Element-wise VJP rules vs torch autograd (float32, relative tolerance 1e-5)."""

import numpy as np
import torch
from gradcheck import check_vjp
from onnx import helper

RNG = np.random.default_rng(0)


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_relu() -> None:
    check_vjp(helper.make_node("Relu", ["x"], ["y"]), {"x": x(2, 3, 4, 5)}, ["x"], torch.relu)
