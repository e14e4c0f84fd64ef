"""ConvTranspose VJP (w.r.t. the data input) vs torch autograd (float32, relative tolerance 1e-5).

The torch reference runs the full transposed conv (no pads) and then crops ``begin`` leading positions and pads/crops
the end to the stated output size, so every ONNX variant (pads, output_padding, auto_pad, output_shape) is one
explicit crop; the forward comparison checks that crop against onnxruntime.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError
from test_rules_conv import symbolic_x, torch_pads  # noqa: F401  (symbolic_x is a fixture)

RNG = np.random.default_rng(0)
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def reference(weight: np.ndarray, begins: list[int], sizes: list[int], stride=1, dilation=1, groups: int = 1):
    """Full ``conv_transpose`` cropped to ``sizes`` starting at ``begins`` (zeros past the full output)."""
    conv, w = CONV_T[weight.ndim - 2], torch.tensor(weight)

    def fn(t: torch.Tensor) -> torch.Tensor:
        full = conv(t, w, stride=stride, dilation=dilation, groups=groups)
        ends = [n + b - f for n, b, f in zip(sizes, begins, full.shape[2:], strict=True)]
        return F.pad(full, torch_pads([-b for b in begins] + ends))

    return fn


# id: (x shape, W shape, ONNX attributes, begin crop, output sizes, torch kwargs); full size s·(in − 1) + (k − 1)·d + 1
CASES = {
    "k2_s2_unet": ((2, 4, 5, 6), (4, 3, 2, 2), {"strides": [2, 2]}, [0, 0], [10, 12], {"stride": 2}),
    "k4_s2_p1": ((2, 3, 5, 4), (3, 2, 4, 4), {"strides": [2, 2], "pads": [1] * 4}, [1, 1], [10, 8], {"stride": 2}),
    "k3_s2_p1_output_padding": (
        (2, 3, 4, 5),
        (3, 4, 3, 3),
        {"strides": [2, 2], "pads": [1] * 4, "output_padding": [1, 1]},
        [1, 1],
        [8, 10],
        {"stride": 2},
    ),
    "group2_dil2_asym_pads": (
        (2, 4, 5, 6),
        (4, 3, 3, 3),
        {"strides": [2, 1], "pads": [2, 0, 1, 3], "dilations": [2, 2], "group": 2},
        [2, 0],
        [10, 7],  # full 13 × 10
        {"stride": (2, 1), "dilation": 2, "groups": 2},
    ),
    "depthwise_s3_output_padding2": (
        (2, 3, 4, 4),
        (3, 1, 3, 3),
        {"strides": [3, 3], "output_padding": [2, 1], "group": 3},
        [0, 0],
        [14, 13],  # full 12 × 12, then output_padding zero rows/columns
        {"stride": 3, "groups": 3},
    ),
    # SAME_*: output in·s; crop total = op + (k − 1)·d + 1 − s, the odd one at the end (UPPER) or start (LOWER).
    "same_upper_k3_s2": (
        (2, 3, 4, 5),
        (3, 2, 3, 3),
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        [0, 0],
        [8, 10],
        {"stride": 2},
    ),
    "same_lower_k3_s2": (
        (2, 3, 4, 5),
        (3, 2, 3, 3),
        {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
        [1, 1],
        [8, 10],
        {"stride": 2},
    ),
    "valid_s2": ((2, 3, 4, 5), (3, 2, 3, 3), {"strides": [2, 2], "auto_pad": "VALID"}, [0, 0], [9, 11], {"stride": 2}),
    # output_shape: crop total = full − output, split as SAME_LOWER unless auto_pad is SAME_UPPER.
    "output_shape": (
        (2, 3, 4, 5),
        (3, 2, 4, 4),
        {"strides": [2, 2], "output_shape": [7, 9]},
        [2, 2],
        [7, 9],
        {"stride": 2},
    ),
    "output_shape_same_upper": (
        (2, 3, 4, 5),
        (3, 2, 4, 4),
        {"strides": [2, 2], "output_shape": [7, 9], "auto_pad": "SAME_UPPER"},
        [1, 1],
        [7, 9],
        {"stride": 2},
    ),
    "1d_s3_p1": ((2, 3, 6), (3, 4, 4), {"strides": [3], "pads": [1, 2]}, [1], [16], {"stride": 3}),
    "3d_s2_p1": (
        (2, 2, 3, 4, 3),
        (2, 3, 3, 3, 3),
        {"strides": [2] * 3, "pads": [1] * 6},
        [1] * 3,
        [5, 7, 5],
        {"stride": 2},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_conv_transpose(case: tuple) -> None:
    x_shape, w_shape, attrs, begins, sizes, kwargs = case
    weight = x(*w_shape)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    check_vjp(node, {"x": x(*x_shape)}, ["x"], reference(weight, begins, sizes, **kwargs), constants={"w": weight})


def test_conv_transpose_bias_is_ignored() -> None:
    weight, bias = x(3, 2, 4, 4), x(2)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])

    def fn(t: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(t, torch.tensor(weight), torch.tensor(bias), stride=2, padding=1)

    check_vjp(node, {"x": x(2, 3, 5, 4)}, ["x"], fn, constants={"w": weight, "b": bias})


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("case", ["k4_s2_p1", "group2_dil2_asym_pads", "same_lower_k3_s2"])
def test_conv_transpose_dynamic_dims(case: str) -> None:
    """With no dim of x known at export the placement of ḡ is sized at run time."""
    test_conv_transpose(CASES[case])


@pytest.mark.usefixtures("symbolic_x")
def test_conv_transpose_output_shape_needs_static_dims() -> None:
    with pytest.raises(GradientError, match="needs static dims"):
        test_conv_transpose(CASES["output_shape"])


def test_conv_transpose_weight_gradient_is_refused() -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    with pytest.raises(GradientError, match="only the data input"):
        check_vjp(
            node, {"x": x(2, 3, 4, 4), "w": x(3, 2, 2, 2)}, ["x", "w"], lambda a, b: F.conv_transpose2d(a, b, stride=2)
        )
