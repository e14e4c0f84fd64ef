"""Resize VJP (relative tolerance 1e-5, float32).

References: torch autograd of ``F.interpolate`` for every mode torch has (bilinear, nearest, nearest-exact, bicubic,
trilinear, antialias: torch's antialias is ONNX's with ``exclude_outside=1``, as torch.onnx exports it), which checks
the interpolation itself. For the attributes torch lacks (other coordinate and nearest modes, exclude_outside,
tf_crop_and_resize, keep_aspect_ratio_policy) the exact Jacobian of onnxruntime's Resize on the whole N-D tensor,
probed on the standard basis (``J[:, k] = Resize(e_k) − Resize(0)``; exact, the op being affine), gives
``x̄ = Jᵀ ḡ``: onnxruntime defines the forward pass, and this checks the rule's one-axis decomposition, its reading of
scales / sizes / roi / axes and the adjoint. Then graphs as torch exporters write them (runtime sizes).
"""

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from gradcheck import OPSET, check_vjp, relative_error, run_vjp
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.autodiff.context import GradientError
from onnxcam_export.autodiff.engine import differentiate
from onnxcam_export.torch_capture import forward_with_taps, to_onnx
from small_models import SegmentationOut
from test_rules_conv import symbolic_x  # noqa: F401  (a fixture)
from test_rules_shape import symbolic_batch
from torch import nn

from onnxcam import contract

RNG = np.random.default_rng(0)
TOL = 1e-5


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def resize(form: str, **attrs: object) -> onnx.NodeProto:
    """``Resize(x, roi, scales | sizes)`` with the given ``form`` ("scales" or "sizes") as a constant input."""
    inputs = [
        "x",
        "roi" if "roi" in form else "",
        "scales" if "scales" in form else "",
        "sizes" if "sizes" in form else "",
    ]
    while not inputs[-1]:
        inputs.pop()
    return helper.make_node("Resize", inputs, ["y"], **attrs)


def resize_constants(shape: tuple[int, ...], scales: tuple[float, ...] | None, sizes: tuple[int, ...] | None) -> dict:
    """``scales``/``sizes`` over the trailing axes, padded with the untouched leading ones."""
    lead = len(shape) - len(scales or sizes)  # type: ignore[arg-type]
    if scales is not None:
        return {"scales": np.array([1.0] * lead + list(scales), np.float32)}
    return {"sizes": np.array(list(shape[:lead]) + list(sizes), np.int64)}  # type: ignore[arg-type]


# -- against torch.nn.functional.interpolate ---------------------------------------------------------------------------
LINEAR = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
CORNERS = {"mode": "linear", "coordinate_transformation_mode": "align_corners"}
NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
NEAREST_EXACT = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
CUBIC = {"mode": "cubic", "coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75}
CUBIC_CORNERS = {**CUBIC, "coordinate_transformation_mode": "align_corners"}
# torch's antialias filters are PIL's: the triangle, and the cubic with a = -0.5
LINEAR_AA = {**LINEAR, "antialias": 1, "exclude_outside": 1}
CUBIC_AA = {**CUBIC, "cubic_coeff_a": -0.5, "antialias": 1, "exclude_outside": 1}

# id: (input shape, scales or None, sizes or None, ONNX attributes, F.interpolate keyword arguments)
TORCH_CASES = {
    "bilinear_up_sizes": ((2, 3, 5, 7), None, (11, 16), LINEAR, {"mode": "bilinear"}),
    "bilinear_down_sizes": ((2, 3, 12, 10), None, (5, 7), LINEAR, {"mode": "bilinear"}),
    "bilinear_x8_scales": ((2, 3, 4, 5), (8.0, 8.0), None, LINEAR, {"mode": "bilinear"}),
    "bilinear_mixed_scales": ((2, 3, 6, 5), (1.5, 0.6), None, LINEAR, {"mode": "bilinear"}),
    "bilinear_1x1_to_hw": ((2, 4, 1, 1), None, (6, 9), LINEAR, {"mode": "bilinear"}),
    "align_corners_up": ((2, 3, 5, 7), None, (11, 16), CORNERS, {"mode": "bilinear", "align_corners": True}),
    "align_corners_down": ((2, 3, 12, 10), None, (5, 7), CORNERS, {"mode": "bilinear", "align_corners": True}),
    "align_corners_x2_scales": ((2, 3, 4, 6), (2.0, 2.0), None, CORNERS, {"mode": "bilinear", "align_corners": True}),
    "nearest_up_sizes": ((2, 3, 5, 7), None, (11, 16), NEAREST, {"mode": "nearest"}),
    "nearest_down_sizes": ((2, 3, 12, 10), None, (5, 7), NEAREST, {"mode": "nearest"}),
    "nearest_x2_scales": ((2, 3, 4, 5), (2.0, 3.0), None, NEAREST, {"mode": "nearest"}),
    "nearest_exact_up": ((2, 3, 5, 7), None, (11, 16), NEAREST_EXACT, {"mode": "nearest-exact"}),
    "nearest_exact_down": ((2, 3, 12, 10), None, (5, 7), NEAREST_EXACT, {"mode": "nearest-exact"}),
    "bicubic_up_sizes": ((2, 3, 5, 7), None, (11, 16), CUBIC, {"mode": "bicubic"}),
    "bicubic_down_sizes": ((2, 3, 12, 10), None, (5, 7), CUBIC, {"mode": "bicubic"}),
    "bicubic_x2_scales": ((2, 3, 4, 5), (2.0, 2.0), None, CUBIC, {"mode": "bicubic"}),
    "bicubic_align_corners": ((2, 3, 5, 7), None, (11, 9), CUBIC_CORNERS, {"mode": "bicubic", "align_corners": True}),
    "bilinear_antialias_down": ((2, 3, 16, 13), None, (5, 6), LINEAR_AA, {"mode": "bilinear", "antialias": True}),
    "bicubic_antialias_down": ((2, 3, 16, 13), None, (5, 6), CUBIC_AA, {"mode": "bicubic", "antialias": True}),
    "bilinear_antialias_up": ((2, 3, 5, 7), None, (11, 16), LINEAR_AA, {"mode": "bilinear", "antialias": True}),
    "linear_1d": ((2, 3, 7), None, (17,), LINEAR, {"mode": "linear"}),
    "trilinear_3d": ((2, 2, 3, 4, 5), None, (5, 3, 8), LINEAR, {"mode": "trilinear"}),
    "nearest_3d_scales": ((2, 2, 3, 4, 5), (2.0, 1.0, 3.0), None, NEAREST, {"mode": "nearest"}),
}


def torch_resize(scales: tuple | None, sizes: tuple | None, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    if scales is not None:
        return lambda t: F.interpolate(t, scale_factor=scales, recompute_scale_factor=False, **kwargs)
    return lambda t: F.interpolate(t, size=sizes, **kwargs)


def check_torch_case(case: tuple) -> float:
    shape, scales, sizes, attrs, kwargs = case
    form = "scales" if scales is not None else "sizes"
    constants = resize_constants(shape, scales, sizes)
    return check_vjp(
        resize(form, **attrs),
        {"x": x(*shape)},
        ["x"],
        torch_resize(scales, sizes, kwargs),
        tol=TOL,
        constants=constants,
    )


@pytest.mark.parametrize("case", TORCH_CASES.values(), ids=list(TORCH_CASES))
def test_resize_vs_torch(case: tuple) -> None:
    check_torch_case(case)


@pytest.mark.parametrize("case", ["bilinear_up_sizes", "bilinear_x8_scales", "nearest_down_sizes", "trilinear_3d"])
def test_resize_symbolic_batch(case: str) -> None:
    """A symbolic batch dim (constant sizes still name a batch of 2: the rule takes an unknown dim as kept)."""
    with symbolic_batch():
        check_torch_case(TORCH_CASES[case])


def test_resize_axes_attribute() -> None:
    shape = (2, 3, 5, 7)
    check_vjp(
        resize("sizes", axes=[3, -2], **LINEAR),
        {"x": x(*shape)},
        ["x"],
        lambda t: F.interpolate(t, size=(11, 16), mode="bilinear"),
        tol=TOL,
        constants={"sizes": np.array([16, 11], np.int64)},
    )


# -- against the Jacobian of onnxruntime's Resize ---------------------------------------------------------------------
def ort_resize(node: onnx.NodeProto, shape: tuple[int, ...], constants: dict) -> Callable[[np.ndarray], np.ndarray]:
    """onnxruntime's Resize ``node`` as a function of ``x`` (float32: its Resize kernels have no float64)."""
    graph = helper.make_graph(
        [node],
        "ort_resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda value: session.run(None, {"x": value.astype(np.float32)})[0].astype(np.float64)


def jacobian_vjp(f: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], seed: np.ndarray) -> np.ndarray:
    """``Jᵀ ḡ`` of the affine map ``f`` with ``J[:, k] = f(e_k) − f(0)``."""
    zero = f(np.zeros(shape))
    columns = [(f(np.eye(1, int(np.prod(shape)), k).reshape(shape)) - zero).ravel() for k in range(int(np.prod(shape)))]
    return (np.stack(columns, axis=1).T @ seed.astype(np.float64).ravel()).reshape(shape)


def check_vs_ort(node: onnx.NodeProto, shape: tuple[int, ...], constants: dict) -> float:
    f = ort_resize(node, shape, constants)
    data = x(*shape)
    expected_out = f(data)
    seed = x(*expected_out.shape)
    out, (grad,) = run_vjp([node], {"x": data}, ["x"], "y", seed, constants)
    assert relative_error(out, expected_out) <= TOL
    err = relative_error(grad, jacobian_vjp(f, shape, seed))
    assert err <= TOL, f"relative error {err:.2e}"
    return err


COORDINATE_MODES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
# (input spatial dims, scales or None, sizes or None): up, down, mixed, non-integer scales, 1-pixel output
GEOMETRIES = {
    "up_sizes": ((5, 7), None, (11, 16)),
    "down_sizes": ((12, 10), None, (5, 7)),
    "mixed_scales": ((6, 5), (1.5, 0.6), None),
    "to_1_pixel": ((4, 6), None, (1, 3)),
}


def geometry_case(geometry: str) -> tuple[tuple[int, ...], str, dict]:
    spatial, scales, sizes = GEOMETRIES[geometry]
    shape = (2, 1, *spatial)
    return shape, "scales" if scales is not None else "sizes", resize_constants(shape, scales, sizes)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("coordinates", COORDINATE_MODES)
@pytest.mark.parametrize(
    "mode",
    [{"mode": "linear"}, {"mode": "cubic"}, {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}]
    + [{"mode": "nearest", "nearest_mode": m} for m in NEAREST_MODES],
    ids=lambda m: "-".join(str(v) for v in m.values()),
)
def test_resize_vs_onnxruntime(mode: dict, coordinates: str, geometry: str) -> None:
    shape, form, constants = geometry_case(geometry)
    check_vs_ort(resize(form, coordinate_transformation_mode=coordinates, **mode), shape, constants)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("mode", [{"mode": "linear"}, {"mode": "cubic"}, {"mode": "cubic", "exclude_outside": 1}])
def test_resize_antialias_vs_onnxruntime(mode: dict, geometry: str) -> None:
    shape, form, constants = geometry_case(geometry)
    check_vs_ort(resize(form, antialias=1, **mode), shape, constants)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("extrapolation", [0.0, 2.5])
@pytest.mark.parametrize("with_axes", [False, True])
def test_tf_crop_and_resize(mode: str, extrapolation: float, with_axes: bool) -> None:
    """The roi crops part of the input and reaches outside it (where ``y`` is the constant extrapolation value)."""
    shape = (2, 2, 6, 7)
    attrs = {"coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": extrapolation}
    if with_axes:  # roi and sizes listed in the order of axes = [W, H]
        attrs["axes"] = [3, 2]
        constants = {"roi": np.array([0.3, -0.2, 1.25, 0.8], np.float32), "sizes": np.array([5, 9], np.int64)}
    else:
        roi = np.array([0, 0, -0.2, 0.3, 1, 1, 0.8, 1.25], np.float32)
        constants = {"roi": roi, **resize_constants(shape, None, (9, 5))}
    check_vs_ort(resize("roi+sizes", mode=mode, **attrs), shape, constants)


@pytest.mark.parametrize(("policy", "sizes"), [("not_larger", (8, 20)), ("not_smaller", (4, 3))])
def test_keep_aspect_ratio_policy(policy: str, sizes: tuple[int, int]) -> None:
    """One scale for both axes (2 and 1/2 here), from the smaller / larger of sizes ÷ input."""
    shape = (2, 2, 4, 6)
    constants = {"sizes": np.array(sizes, np.int64)}
    check_vs_ort(resize("sizes", mode="linear", axes=[2, 3], keep_aspect_ratio_policy=policy), shape, constants)


# -- refusals ---------------------------------------------------------------------------------------------------------
def test_runtime_scales_fail() -> None:
    with pytest.raises(GradientError, match=r"scales input .* must be a constant"):
        run_vjp(
            [resize("scales", mode="linear")],
            {"x": x(2, 3, 4, 5), "scales": np.array([1, 1, 2, 2], np.float32)},
            ["x"],
            "y",
            x(2, 3, 8, 10),
        )


@pytest.mark.usefixtures("symbolic_x")
def test_unknown_spatial_dims_fail() -> None:
    with pytest.raises(GradientError, match=r"axis 2 .* is resized but its size is unknown"):
        check_torch_case(TORCH_CASES["bilinear_x8_scales"])


@pytest.mark.parametrize(
    ("spatial", "sizes"),
    [((4, 6), (7, 20)), ((5, 6), (7, 20))],
    ids=["floor_differs_from_rounding", "scale_inexact_in_float32"],  # 7/4: 6 · 1.75 = 10.5 → 11; 7/5 = 1.4
)
def test_inexact_aspect_ratio_scale_fails(spatial: tuple[int, int], sizes: tuple[int, int]) -> None:
    node = resize("sizes", mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")
    with pytest.raises(GradientError, match="no exact scales-input equivalent"):
        run_vjp([node], {"x": x(1, 1, *spatial)}, ["x"], "y", x(1, 1, 7, 8), {"sizes": np.array(sizes, np.int64)})


def test_nearest_antialias_fails() -> None:
    """onnxruntime cannot run antialias with nearest (the forward fails too): the rule says so."""
    node = resize("sizes", mode="nearest", antialias=1)
    with pytest.raises(GradientError, match="onnxruntime cannot evaluate it"):
        run_vjp([node], {"x": x(1, 1, 6, 6)}, ["x"], "y", x(1, 1, 3, 3), {"sizes": np.array([1, 1, 3, 3], np.int64)})


def runtime_sizes_model(out_shape: tuple[int, ...] | None) -> onnx.ModelProto:
    """``y = Resize(x, sizes)`` with ``sizes`` a graph input, ``y`` declared with ``out_shape``."""
    float_vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [resize("sizes", mode="linear")],
        "runtime_sizes",
        [float_vi("x", TensorProto.FLOAT, ["N", 3, 4, 5]), float_vi("sizes", TensorProto.INT64, [4])],
        [float_vi("y", TensorProto.FLOAT, out_shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_runtime_sizes_with_declared_output_shape() -> None:
    """Sizes computed at run time: the resized lengths come from the (declared or inferred) output shape."""
    inputs = {"x": x(2, 3, 4, 5), "sizes": np.array([2, 3, 9, 7], np.int64)}
    check_vjp(
        resize("sizes", mode="linear"), inputs, ["x"], lambda t, _: F.interpolate(t, size=(9, 7), mode="bilinear")
    )


def test_runtime_sizes_unknown_output_fails() -> None:
    model = runtime_sizes_model(None)
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, None))
    with pytest.raises(GradientError, match="output size along axis 1 is unknown"):
        differentiate(model, ["x"], "y", "seed")


def test_backward_is_one_matmul_per_resized_axis() -> None:
    """N and C are kept (``R = I``, skipped): ``x̄ = R_hᵀ · ḡ · R_w``, two MatMuls and nothing else."""
    model = runtime_sizes_model(("N", 3, 9, 7))
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ("N", 3, 9, 7)))
    assert [n.op_type for n in differentiate(model, ["x"], "y", "seed").nodes] == ["MatMul", "MatMul"]


# -- a small segmentation head: Conv → Relu → Resize(×8) → Conv ------------------------------------------------------
def test_segmentation_head_vs_torch() -> None:
    """∂⟨ḡ, logits⟩/∂(first conv output) through ReLU, bilinear ×8 upsampling and a 1×1 classifier conv."""
    w1, w2 = 0.3 * x(6, 3, 3, 3), 0.3 * x(4, 6, 1, 1)
    data = x(2, 3, 7, 9)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Resize", ["r", "", "scales"], ["up"], **LINEAR),
        helper.make_node("Conv", ["up", "w2"], ["y"]),
    ]
    constants = {"w1": w1, "w2": w2, "scales": np.array([1, 1, 8, 8], np.float32)}
    graph = helper.make_graph(
        nodes,
        "seg_head",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 7, 9]),
            helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", 4, 56, 72]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 56, 72])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    backward = differentiate(model, ["c1"], "y", "seed")
    model.graph.node.extend(backward.nodes)
    model.graph.initializer.extend(backward.initializers)
    model.graph.output.append(helper.make_tensor_value_info(backward.grads["c1"], TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = x(2, 4, 56, 72)
    _, grad = session.run(None, {"x": data, "seed": seed})

    c1 = F.conv2d(torch.tensor(data), torch.tensor(w1), padding=1).requires_grad_()
    y = F.conv2d(F.interpolate(torch.relu(c1), scale_factor=8, mode="bilinear"), torch.tensor(w2))
    (expected,) = torch.autograd.grad(y, c1, torch.tensor(seed))
    assert relative_error(grad, expected.numpy()) <= TOL


# -- torch-exported segmentation heads: sizes computed at run time from Shape(x) -----------------------------------
class SegNet(nn.Module):
    """Stride-4 conv stem, DeepLab's image-pooling branch (1×1 → h×w), a nearest ×2, bilinear back to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, 2, 1), nn.ReLU())
        self.project = nn.Conv2d(6, 6, 1)
        self.classifier = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        pooled = F.interpolate(self.project(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:], mode="bilinear")
        logits = F.interpolate(self.classifier(torch.relu(f + pooled)), scale_factor=2, mode="nearest")
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def exported_vjp_error(net: nn.Module, layer: str, size: tuple[int, int], exporter: str) -> float:
    """Relative error of ``∂⟨ḡ, net(x)⟩/∂layer`` built on the exporter's graph vs torch autograd (batch 3, while the
    export example had 2, so the batch dim is really dynamic)."""
    model = to_onnx(net.eval(), [layer], size, exporter=exporter)
    assert any(n.op_type == "Resize" for n in model.graph.node)
    tap = contract.activation_name(layer)
    data = x(3, 3, *size)
    scores, (activation,) = forward_with_taps(net, [layer], torch.tensor(data))
    seed = x(*scores.shape)
    model.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", *seed.shape[1:]]))
    backward = differentiate(model, [tap], contract.SCORES, "seed")
    model.graph.node.extend(backward.nodes)
    model.graph.initializer.extend(backward.initializers)
    model.graph.output.append(helper.make_tensor_value_info(backward.grads[tap], TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = session.run([backward.grads[tap]], {contract.INPUT: data, "seed": seed})[0]
    (expected,) = torch.autograd.grad(scores, activation, torch.tensor(seed))
    return relative_error(grad, expected.numpy())


@pytest.mark.parametrize("exporter", [pytest.param("dynamo", marks=pytest.mark.slow), "torchscript"])
def test_exported_segmentation_net_vs_torch(exporter: str) -> None:
    """Three Resize nodes as the exporter writes them (runtime sizes from Shape(x), constant scales)."""
    torch.manual_seed(0)
    assert exported_vjp_error(SegNet(), "stem", (22, 30), exporter) <= TOL  # stem 6 × 8 → 12 × 16 → 22 × 30


@pytest.mark.slow
def test_fcn_resnet50_head_vs_torch() -> None:
    """FCN's last 1×1 conv and its bilinear upsampling (9 × 11 → 72 × 88) as exported, from the tap before them.

    The path from ``classifier.3`` is linear, so no ReLU near-tie can make float32 rounding flip a gradient.
    """
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    net = SegmentationOut(fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False))
    assert exported_vjp_error(net, "model.classifier.3", (72, 88), "torchscript") <= TOL
