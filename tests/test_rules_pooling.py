"""Pooling VJPs vs torch autograd (float32, relative tolerance 1e-5).

Max pools: onnxruntime's MaxPool and torch's max_pool/adaptive_max_pool both send a window's gradient to its *first*
maximum in row-major scan order, so ties (post-ReLU zeros, repeated integers) are routed identically; the tie tests
check it element by element. Average pools: the per-window divisor must match torch for count_include_pad 0/1,
padding and ceil_mode windows that overhang the padded input.
"""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp, run_vjp
from onnx import helper
from test_rules_conv import symbolic_x, torch_pads  # noqa: F401  (symbolic_x is a fixture)

RNG = np.random.default_rng(0)
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def onnx_attrs(kernel: list[int], stride: int, pads: list[int], extra: dict) -> dict:
    return {"kernel_shape": kernel, "strides": [stride] * len(kernel), "pads": pads, **extra}


# id: (input shape, kernel, stride, ONNX pads, extra ONNX attributes)
MAX_CASES = {
    "k3_s2_overlap": ((2, 3, 9, 9), [3, 3], 2, [0] * 4, {}),
    "k3_s2_p1": ((2, 3, 8, 10), [3, 3], 2, [1] * 4, {}),
    "k3_s2_p1_ceil": ((2, 3, 8, 8), [3, 3], 2, [1] * 4, {"ceil_mode": 1}),
    "k2_s2_odd": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {}),
    "k2_s2_odd_ceil": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {"ceil_mode": 1}),
    "k3_s1_p2_dil2": ((2, 2, 9, 9), [3, 3], 1, [2] * 4, {"dilations": [2, 2]}),
    "k3_s2_asym_pads": ((2, 3, 8, 9), [3, 3], 2, [1, 0, 0, 1], {}),
    "storage_order_1": ((2, 3, 8, 9), [3, 3], 2, [1] * 4, {"storage_order": 1}),
    "1d_k3_s2_p1": ((2, 3, 11), [3], 2, [1, 1], {}),
    "3d_k2_s2": ((2, 2, 5, 6, 7), [2, 2, 2], 2, [0] * 6, {}),
}


def max_reference(kernel: list[int], stride: int, pads: list[int], extra: dict):
    """torch max pool; asymmetric pads (which torch lacks) become an explicit −inf pad, which never wins."""
    n = len(kernel)
    dilation, ceil = extra.get("dilations", 1), bool(extra.get("ceil_mode", 0))
    pool = partial(MAX_POOL[n], kernel_size=kernel, stride=stride, dilation=dilation, ceil_mode=ceil)
    if pads[:n] == pads[n:]:
        return lambda t: pool(t, padding=pads[:n])
    return lambda t: pool(F.pad(t, torch_pads(pads), value=-torch.inf))


@pytest.mark.parametrize("case", MAX_CASES.values(), ids=list(MAX_CASES))
def test_max_pool(case: tuple) -> None:
    shape, kernel, stride, pads, extra = case
    node = helper.make_node("MaxPool", ["x"], ["y"], **onnx_attrs(kernel, stride, pads, extra))
    check_vjp(node, {"x": x(*shape)}, ["x"], max_reference(kernel, stride, pads, extra))


@pytest.mark.parametrize("case", ["k3_s2_overlap", "k3_s2_p1_ceil", "k3_s1_p2_dil2"])
def test_max_pool_ties_go_to_the_first_maximum(case: str) -> None:
    """Post-ReLU zeros and repeated small integers: every window holds ties, routed like torch (first in scan order)."""
    shape, kernel, stride, pads, extra = MAX_CASES[case]
    data = np.minimum(RNG.integers(-3, 2, shape), 1).astype(np.float32)  # mostly ≤ 0 → zeros after ReLU
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], **onnx_attrs(kernel, stride, pads, extra)),
    ]
    pool = max_reference(kernel, stride, pads, extra)
    check_vjp(nodes, {"x": data}, ["x"], lambda t: pool(torch.relu(t)), tol=0.0)


def test_max_pool_tie_routing_is_first_index() -> None:
    """Documents the convention: a 2x2 window of four equal values sends all of ḡ to its top-left element."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    data, seed = np.ones((2, 1, 2, 4), dtype=np.float32), np.ones((2, 1, 1, 2), dtype=np.float32)
    _, (grad,) = run_vjp([node], {"x": data}, ["x"], "y", seed)
    expected = np.zeros_like(data)
    expected[:, :, 0, ::2] = 1.0
    np.testing.assert_array_equal(grad, expected)
    t = torch.tensor(data, requires_grad=True)
    np.testing.assert_array_equal(torch.autograd.grad(F.max_pool2d(t, 2).sum(), t)[0].numpy(), expected)


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("case", ["k3_s2_p1_ceil", "k3_s2_asym_pads"])
def test_max_pool_dynamic_dims(case: str) -> None:
    test_max_pool(MAX_CASES[case])
