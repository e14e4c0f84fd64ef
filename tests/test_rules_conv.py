"""Conv VJP (w.r.t. the data input) vs torch autograd (float32, relative tolerance 1e-5).

The torch reference zero-pads explicitly with ``F.pad`` (ONNX pads may be asymmetric) and then runs an unpadded
``conv{1,2,3}d``; odd input sizes with strides check that the last rows/columns get their gradient (or exactly zero
when no window reads them).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError

RNG = np.random.default_rng(0)
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def torch_pads(pads: list[int]) -> tuple[int, ...]:
    """ONNX ``[b1, b2, …, e1, e2, …]`` → F.pad's ``(b_last, e_last, …, b1, e1)``."""
    n = len(pads) // 2
    return tuple(p for k in reversed(range(n)) for p in (pads[k], pads[n + k]))


def conv_reference(weight: np.ndarray, pads: list[int], stride=1, dilation=1, groups: int = 1):
    conv, w = CONV[weight.ndim - 2], torch.tensor(weight)
    return lambda t: conv(F.pad(t, torch_pads(pads)), w, stride=stride, dilation=dilation, groups=groups)


# id: (input shape, weight shape, ONNX attributes, the pads torch must apply, torch conv kwargs)
CASES = {
    "odd_7x9_s2_p1": ((2, 3, 7, 9), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1] * 4}, [1] * 4, {"stride": 2}),
    "even_8x8_s2_p1": ((2, 3, 8, 8), (5, 3, 3, 3), {"strides": [2, 2], "pads": [1] * 4}, [1] * 4, {"stride": 2}),
    "k5_s3_no_pad": ((2, 3, 12, 13), (4, 3, 5, 5), {"strides": [3, 3]}, [0] * 4, {"stride": 3}),
    "1x1_s3_unread_rows": ((2, 3, 8, 8), (4, 3, 1, 1), {"strides": [3, 3]}, [0] * 4, {"stride": 3}),
    "depthwise_s2": (
        (2, 4, 10, 11),
        (4, 1, 3, 3),
        {"strides": [2, 2], "pads": [1] * 4, "group": 4},
        [1] * 4,
        {"stride": 2, "groups": 4},
    ),
    "group2_dil2_asym_pads": (
        (2, 4, 9, 10),
        (6, 2, 3, 3),
        {"strides": [1, 2], "pads": [2, 1, 0, 3], "dilations": [2, 2], "group": 2},
        [2, 1, 0, 3],
        {"stride": (1, 2), "dilation": 2, "groups": 2},
    ),
    # SAME_*: total pad = (ceil(n/s) − 1)·s + k − n; UPPER puts the odd one at the end, LOWER at the start.
    "same_upper_s2": (
        (2, 3, 8, 9),
        (4, 3, 3, 3),
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        [0, 1, 1, 1],
        {"stride": 2},
    ),
    "same_lower_k2": ((2, 3, 6, 6), (4, 3, 2, 2), {"auto_pad": "SAME_LOWER"}, [1, 1, 0, 0], {}),
    "valid_s2": ((2, 3, 9, 8), (4, 3, 3, 3), {"strides": [2, 2], "auto_pad": "VALID"}, [0] * 4, {"stride": 2}),
    "1d_s3_dil2_asym_pads": (
        (2, 3, 11),
        (5, 3, 4),
        {"strides": [3], "pads": [2, 1], "dilations": [2]},
        [2, 1],
        {"stride": 3, "dilation": 2},
    ),
    "3d_s2_p1": ((2, 2, 5, 6, 7), (3, 2, 3, 3, 3), {"strides": [2] * 3, "pads": [1] * 6}, [1] * 6, {"stride": 2}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_conv(case: tuple) -> None:
    x_shape, w_shape, attrs, pads, kwargs = case
    weight = x(*w_shape)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    check_vjp(node, {"x": x(*x_shape)}, ["x"], conv_reference(weight, pads, **kwargs), constants={"w": weight})


def test_conv_bias_is_ignored() -> None:
    weight, bias = x(4, 3, 3, 3), x(4)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])

    def reference(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, torch.tensor(weight), torch.tensor(bias), stride=2, padding=1)

    check_vjp(node, {"x": x(2, 3, 7, 9)}, ["x"], reference, constants={"w": weight, "b": bias})


@pytest.fixture
def symbolic_x(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declare every dim of the graph input ``x`` symbolic in check_vjp's graph, so rules see no static dim of it."""
    make = helper.make_tensor_value_info

    def value_info(name: str, elem_type: int, shape, *args, **kwargs):
        shape = [f"x_dim{i}" for i in range(len(shape))] if name == "x" else shape
        return make(name, elem_type, shape, *args, **kwargs)

    monkeypatch.setattr(helper, "make_tensor_value_info", value_info)


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("case", [CASES["odd_7x9_s2_p1"], CASES["group2_dil2_asym_pads"]], ids=["odd", "asym"])
def test_conv_dynamic_dims(case: tuple) -> None:
    """With no dim of x known at export the crop of the transposed conv is sized at run time."""
    test_conv(case)


@pytest.mark.usefixtures("symbolic_x")
def test_conv_same_pads_need_static_dims() -> None:
    """SAME_* pads depend on the input size: with symbolic dims the rule refuses with a clear message."""
    with pytest.raises(GradientError, match="needs static dims"):
        test_conv(CASES["same_upper_s2"])
