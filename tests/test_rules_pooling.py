"""Pooling VJPs vs torch autograd (float32, relative tolerance 1e-5).

Max pools: onnxruntime's MaxPool and torch's max_pool/adaptive_max_pool both send a window's gradient to its *first*
maximum in row-major scan order, so ties (post-ReLU zeros, repeated integers) are routed identically; the tie tests
check it element by element. Average pools: the per-window divisor must match torch for count_include_pad 0/1,
padding and ceil_mode windows that overhang the padded input.
"""

from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from gradcheck import OPSET, check_vjp, relative_error, run_vjp
from onnx import TensorProto, helper
from onnxcam_export.autodiff.engine import differentiate
from test_rules_conv import symbolic_x, torch_pads  # noqa: F401  (symbolic_x is a fixture)

RNG = np.random.default_rng(0)
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def onnx_attrs(kernel: list[int], stride: int, pads: list[int] | None, extra: dict) -> dict:
    """The pool's ONNX attributes; ``pads=None`` leaves them to ``auto_pad`` in ``extra``."""
    return {"kernel_shape": kernel, "strides": [stride] * len(kernel), **({"pads": pads} if pads else {}), **extra}


SAME_UPPER_PADS = [0, 1, 1, 1]  # 8 rows, k3 s2: 4 windows need 1 more row (at the end); 9 columns: 2 more (1 + 1)


# id: (input shape, kernel, stride, ONNX pads, extra ONNX attributes)
MAX_CASES = {
    "k3_s2_overlap": ((2, 3, 9, 9), [3, 3], 2, [0] * 4, {}),
    "k3_s2_p1": ((2, 3, 8, 10), [3, 3], 2, [1] * 4, {}),
    "k3_s2_p1_ceil": ((2, 3, 8, 8), [3, 3], 2, [1] * 4, {"ceil_mode": 1}),
    "k2_s2_odd": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {}),
    "k2_s2_odd_ceil": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {"ceil_mode": 1}),
    "k3_s1_p1_dil2": ((2, 2, 9, 9), [3, 3], 1, [1] * 4, {"dilations": [2, 2]}),
    "k3_s2_dil2_asym_pads": ((2, 2, 10, 9), [3, 3], 2, [2, 0, 1, 2], {"dilations": [2, 2]}),
    "k3_s2_asym_pads": ((2, 3, 8, 9), [3, 3], 2, [1, 0, 0, 1], {}),
    "same_upper": ((2, 3, 8, 9), [3, 3], 2, None, {"auto_pad": "SAME_UPPER"}),
    "storage_order_1": ((2, 3, 8, 9), [3, 3], 2, [1] * 4, {"storage_order": 1}),
    "1d_k3_s2_p1": ((2, 3, 11), [3], 2, [1, 1], {}),
    "3d_k2_s2": ((2, 2, 5, 6, 7), [2, 2, 2], 2, [0] * 6, {}),
}


def max_reference(kernel: list[int], stride: int, pads: list[int] | None, extra: dict):
    """torch max pool; asymmetric pads (which torch lacks) become an explicit −inf pad, which never wins."""
    n, pads = len(kernel), pads or SAME_UPPER_PADS
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


@pytest.mark.parametrize("case", ["k3_s2_overlap", "k3_s2_p1_ceil", "k3_s1_p1_dil2", "k3_s2_dil2_asym_pads"])
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


# id: (input shape, kernel, stride, ONNX pads, extra ONNX attributes)
AVG_CASES = {
    "k3_s2_p1_excl": ((2, 3, 9, 9), [3, 3], 2, [1] * 4, {}),
    "k3_s2_p1_incl": ((2, 3, 9, 9), [3, 3], 2, [1] * 4, {"count_include_pad": 1}),
    "k3_s2_p1_ceil_excl": ((2, 3, 8, 8), [3, 3], 2, [1] * 4, {"ceil_mode": 1}),
    # the last window overhangs the padded input: torch and onnxruntime divide by the part inside input + pads
    "k3_s2_p1_ceil_incl": ((2, 3, 8, 8), [3, 3], 2, [1] * 4, {"ceil_mode": 1, "count_include_pad": 1}),
    # (11 columns would give torch 4 windows but ONNX shape inference 5: torch drops a window starting in the end pad)
    "k3_s3_p1_ceil_incl": ((2, 3, 10, 12), [3, 3], 3, [1] * 4, {"ceil_mode": 1, "count_include_pad": 1}),
    "k2_s2_odd_ceil_excl": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {"ceil_mode": 1}),
    "k2_s2_odd_ceil_incl": ((2, 3, 7, 7), [2, 2], 2, [0] * 4, {"ceil_mode": 1, "count_include_pad": 1}),
    "k2_s2_odd_floor": ((2, 3, 7, 9), [2, 2], 2, [0] * 4, {}),
    "k2_s1_overlap": ((2, 3, 5, 6), [2, 2], 1, [0] * 4, {}),
    "k3x2_s2_asym_excl": ((2, 3, 8, 9), [3, 2], 2, [1, 0, 0, 1], {}),
    "k3x2_s2_asym_incl": ((2, 3, 8, 9), [3, 2], 2, [1, 0, 0, 1], {"count_include_pad": 1}),
    "same_upper_excl": ((2, 3, 8, 9), [3, 3], 2, None, {"auto_pad": "SAME_UPPER"}),
    "1d_k3_s2_p1_ceil_incl": ((2, 3, 10), [3], 2, [1, 1], {"ceil_mode": 1, "count_include_pad": 1}),
    "3d_k2_s2_p1_excl": ((2, 2, 5, 6, 7), [2, 2, 2], 2, [1] * 6, {}),
}


def avg_reference(kernel: list[int], stride: int, pads: list[int] | None, extra: dict):
    """torch avg pool; asymmetric pads become an explicit zero pad with divisor = avg(pad(x)) / avg(pad(1))."""
    n, pads = len(kernel), pads or SAME_UPPER_PADS
    incl, ceil = bool(extra.get("count_include_pad", 0)), bool(extra.get("ceil_mode", 0))
    pool = partial(AVG_POOL[n], kernel_size=kernel, stride=stride, ceil_mode=ceil)
    if pads[:n] == pads[n:]:
        return lambda t: pool(t, padding=pads[:n], count_include_pad=incl)
    if incl:
        return lambda t: pool(F.pad(t, torch_pads(pads)))
    return lambda t: pool(F.pad(t, torch_pads(pads))) / pool(F.pad(torch.ones_like(t), torch_pads(pads)))


@pytest.mark.parametrize("case", AVG_CASES.values(), ids=list(AVG_CASES))
def test_average_pool(case: tuple) -> None:
    shape, kernel, stride, pads, extra = case
    node = helper.make_node("AveragePool", ["x"], ["y"], **onnx_attrs(kernel, stride, pads, extra))
    check_vjp(node, {"x": x(*shape)}, ["x"], avg_reference(kernel, stride, pads, extra))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 4, 9), (2, 2, 3, 4, 5)], ids=["2d", "1d", "3d"])
def test_global_pool(op: str, shape: tuple[int, ...]) -> None:
    axes = tuple(range(2, len(shape)))
    if op == "GlobalAveragePool":
        reference = lambda t: t.mean(axes, keepdim=True)  # noqa: E731
    else:
        reference = lambda t: t.flatten(2).max(2).values.reshape(*t.shape[:2], *[1] * len(axes))  # noqa: E731
    check_vjp(helper.make_node(op, ["x"], ["y"]), {"x": x(*shape)}, ["x"], reference)


def test_global_max_pool_ties_go_to_the_first_maximum() -> None:
    """Post-ReLU maps that are all zero (and maps with repeated maxima) route ḡ like torch's adaptive_max_pool2d."""
    data = np.minimum(RNG.integers(-3, 2, (2, 4, 3, 5)), 1).astype(np.float32)
    data[0, 1] = -1.0  # an all-zero map after ReLU
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalMaxPool", ["r"], ["y"])]
    check_vjp(nodes, {"x": data}, ["x"], lambda t: F.adaptive_max_pool2d(torch.relu(t), 1), tol=0.0)


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool_dynamic_dims(op: str) -> None:
    test_global_pool(op, (2, 3, 5, 7))


def run_undeclared(node: onnx.NodeProto, data: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward output and VJP of a one-node graph ``x → y`` whose output shapes are left undeclared."""
    float_vi = partial(helper.make_tensor_value_info, elem_type=TensorProto.FLOAT, shape=None)
    inputs = [float_vi("x", shape=data.shape), float_vi("seed")]
    graph = helper.make_graph([node], "g", inputs, [float_vi("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    backward = differentiate(model, ["x"], "y", "seed")
    model.graph.node.extend(backward.nodes)
    model.graph.initializer.extend(backward.initializers)
    model.graph.output.append(float_vi(backward.grads["x"]))
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, grad = session.run(None, {"x": data, "seed": seed})
    return out, grad


@pytest.mark.parametrize("op, incl", [("AveragePool", 1), ("AveragePool", 0), ("MaxPool", None)])
def test_pool_ceil_mode_drops_a_window_starting_in_the_end_pad(op: str, incl: int | None) -> None:
    """11 columns, k3 s3 p1 ceil: onnxruntime and torch give 4 windows, ONNX shape inference 5.

    check_vjp cannot declare the output (the checker rejects 4 vs 5), so the graph runs with undeclared shapes.
    """
    data, seed = x(2, 3, 11), RNG.standard_normal((2, 3, 4)).astype(np.float32)
    extra = {} if incl is None else {"count_include_pad": incl}
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3], strides=[3], pads=[1, 1], ceil_mode=1, **extra)
    out, grad = run_undeclared(node, data, seed)
    t = torch.tensor(data, requires_grad=True)
    if op == "MaxPool":
        ref = F.max_pool1d(t, 3, 3, 1, ceil_mode=True)
    else:
        ref = F.avg_pool1d(t, 3, 3, 1, ceil_mode=True, count_include_pad=bool(incl))
    (ref_grad,) = torch.autograd.grad(ref, t, torch.tensor(seed))
    assert relative_error(out, ref.detach().numpy()) <= 1e-6
    assert relative_error(grad, ref_grad.numpy()) <= 1e-6


def lp_reference(p: int, kernel: list[int], stride: int, pads: list[int], dilation: int = 1):
    """``(Σ_window |x|^p)^(1/p)``: a depthwise all-ones conv over the zero-padded ``|x|^p``."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(t.shape[1], 1, *kernel, dtype=t.dtype)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
        summed = conv(F.pad(t.abs() ** p, torch_pads(pads)), ones, stride=stride, dilation=dilation, groups=t.shape[1])
        return summed ** (1.0 / p)

    return fn


# id: (input shape, p, kernel, stride, ONNX pads, dilation)
LP_CASES = {
    "p2_k2_s2": ((2, 3, 6, 7), 2, [2, 2], 2, [0] * 4, 1),
    "p2_k3_s2_p1": ((2, 3, 7, 8), 2, [3, 3], 2, [1] * 4, 1),
    "p3_k3_s1_asym_pads": ((2, 2, 6, 6), 3, [3, 3], 1, [1, 0, 0, 2], 1),
    "p1_k2_s1": ((2, 3, 5, 5), 1, [2, 2], 1, [0] * 4, 1),
    "p2_k2_s1_dil2": ((2, 3, 7, 7), 2, [2, 2], 1, [0] * 4, 2),
    "1d_p2_k3_s2": ((2, 3, 9), 2, [3], 2, [0, 0], 1),
}


@pytest.mark.parametrize("case", LP_CASES.values(), ids=list(LP_CASES))
def test_lp_pool(case: tuple) -> None:
    shape, p, kernel, stride, pads, dilation = case
    attrs = {"p": p, "kernel_shape": kernel, "strides": [stride] * len(kernel), "pads": pads}
    if dilation != 1:
        attrs["dilations"] = [dilation] * len(kernel)
    node = helper.make_node("LpPool", ["x"], ["y"], **attrs)
    check_vjp(node, {"x": x(*shape)}, ["x"], lp_reference(p, kernel, stride, pads, dilation))


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool(p: int) -> None:
    node = helper.make_node("GlobalLpPool", ["x"], ["y"], p=p)
    check_vjp(node, {"x": x(2, 3, 4, 5)}, ["x"], lambda t: (t.abs() ** p).sum((2, 3), keepdim=True) ** (1.0 / p))


def test_lp_pool_all_zero_window_gets_zero_gradient() -> None:
    value = x(2, 3, 6, 6)
    value[0, 1, :2, :2] = 0.0
    node = helper.make_node("LpPool", ["x"], ["y"], p=2, kernel_shape=[2, 2], strides=[2, 2])
    _, (grad,) = run_vjp([node], {"x": value}, ["x"], "y", x(2, 3, 3, 3))
    assert np.isfinite(grad).all() and not grad[0, 1, :2, :2].any()


def test_torch_lp_pool2d_decomposition() -> None:
    """torch exports ``LPPool2d`` as Pow → AveragePool → sign·relu(|·|) → ·k → Pow(1/p): needs the Sign rule."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node("AveragePool", ["sq"], ["avg"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sign", ["avg"], ["sgn"]),
        helper.make_node("Abs", ["avg"], ["mag"]),
        helper.make_node("Relu", ["mag"], ["pos"]),
        helper.make_node("Mul", ["sgn", "pos"], ["signed"]),
        helper.make_node("Mul", ["signed", "four"], ["summed"]),
        helper.make_node("Pow", ["summed", "half"], ["y"]),
    ]
    constants = {k: np.array(v, np.float32) for k, v in {"two": 2.0, "four": 4.0, "half": 0.5}.items()}
    check_vjp(nodes, {"x": x(2, 3, 6, 6)}, ["x"], lambda t: F.lp_pool2d(t, 2, 2), constants=constants)


@pytest.mark.parametrize("output_shape", [None, (2, 3, 9, 9)], ids=["default", "output_shape"])
def test_max_unpool(output_shape: tuple[int, ...] | None) -> None:
    """SegNet's decoder: MaxUnpool2d with the indices of the encoder's MaxPool2d (torch's are per (n, c) plane)."""
    size = output_shape[2:] if output_shape else (8, 8)
    _, plane_indices = F.max_pool2d(torch.tensor(x(2, 3, *size)), 2, 2, return_indices=True)
    h, w = size
    offsets = (np.arange(2)[:, None] * 3 + np.arange(3)[None, :]) * h * w
    constants = {"i": plane_indices.numpy() + offsets[:, :, None, None]}
    inputs = ["x", "i"]
    if output_shape:
        constants["shape"] = np.array(output_shape, np.int64)
        inputs.append("shape")
    node = helper.make_node("MaxUnpool", inputs, ["y"], kernel_shape=[2, 2], strides=[2, 2])

    def reference(t: torch.Tensor) -> torch.Tensor:
        return F.max_unpool2d(t, plane_indices, 2, 2, output_size=size)

    check_vjp(node, {"x": x(2, 3, *plane_indices.shape[2:])}, ["x"], reference, constants=constants)
