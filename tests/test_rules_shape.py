"""Shape-op VJP rules vs torch autograd (float32, relative tolerance 1e-5; the rules only move values, so exact).

Every test here (and in test_rules_linear.py / test_rules_reduce.py, which import the ``batch_dim`` fixture) runs
twice: with static shapes, and with dim 0 of every graph input/output declared symbolic, as in exported models.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError

RNG = np.random.default_rng(0)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@contextmanager
def symbolic_batch() -> Iterator[None]:
    """Graphs built inside declare dim 0 of their inputs/outputs as a symbol (``N2`` for size 2) when it is > 1."""
    make = helper.make_tensor_value_info

    def symbolic(name: str, elem_type: int, shape: tuple | None, *args: object, **kwargs: object) -> object:
        if shape and isinstance(shape[0], int) and shape[0] > 1:
            shape = (f"N{shape[0]}", *shape[1:])
        return make(name, elem_type, shape, *args, **kwargs)

    with mock.patch.object(helper, "make_tensor_value_info", symbolic):
        yield


@pytest.fixture(params=["static", "symbolic"], autouse=True)
def batch_dim(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run each test with a static and with a symbolic batch dim."""
    if request.param == "static":
        yield "static"
    else:
        with symbolic_batch():
            yield "symbolic"


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def node(op: str, inputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, ["y"], **attrs)


# -- pure reshapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[0, -1], [-1, 20], [0, 12, 5], [2, 3, 2, 2, 5]], ids=str)
def test_reshape(shape: list[int]) -> None:
    value = x(2, 3, 4, 5)
    torch_shape = [value.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    check_vjp(
        node("Reshape", ["x", "shape"]),
        {"x": value},
        ["x"],
        lambda t: t.reshape(torch_shape),
        constants={"shape": ints(*shape)},
    )


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis: int) -> None:
    value = x(2, 3, 4, 5)
    split = axis % value.ndim
    check_vjp(
        node("Flatten", ["x"], axis=axis),
        {"x": value},
        ["x"],
        lambda t: t.reshape(int(np.prod(value.shape[:split])), -1),
    )


def test_flatten_by_runtime_shape() -> None:
    """``x.view(x.size(0), -1)`` as exported: the target shape is computed from ``Shape(x)`` (no gradient there)."""
    check_vjp(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "zero_axis"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
            node("Reshape", ["x", "target"]),
        ],
        {"x": x(2, 3, 4, 5)},
        ["x"],
        lambda t: t.reshape(t.shape[0], -1),
        constants={"zero": np.array(0, dtype=np.int64), "zero_axis": ints(0), "minus_one": ints(-1)},
    )


@pytest.mark.parametrize("axes", [[1], [-1], [1, 3], None], ids=str)
def test_squeeze(axes: list[int] | None) -> None:
    inputs = ["x"] if axes is None else ["x", "axes"]
    constants = {} if axes is None else {"axes": ints(*axes)}
    torch_dims = (1, 3) if axes is None else tuple(axes)
    check_vjp(
        node("Squeeze", inputs), {"x": x(2, 1, 4, 1)}, ["x"], lambda t: t.squeeze(torch_dims), constants=constants
    )


@pytest.mark.parametrize(("axes", "shape"), [([0], (1, 2, 3, 4)), ([-1], (2, 3, 4, 1)), ([1, 3], (2, 1, 3, 1, 4))])
def test_unsqueeze(axes: list[int], shape: tuple[int, ...]) -> None:
    check_vjp(
        node("Unsqueeze", ["x", "axes"]),
        {"x": x(2, 3, 4)},
        ["x"],
        lambda t: t.reshape(shape),
        constants={"axes": ints(*axes)},
    )


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [3, 1, 0, 2], None], ids=str)
def test_transpose(perm: list[int] | None) -> None:
    attrs = {} if perm is None else {"perm": perm}
    torch_perm = perm or [3, 2, 1, 0]
    check_vjp(node("Transpose", ["x"], **attrs), {"x": x(2, 3, 4, 5)}, ["x"], lambda t: t.permute(torch_perm))


# -- concat / split --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [1, -1, 0])
@pytest.mark.parametrize("wrt", [["a", "b", "c"], ["b"], ["a", "c"]], ids="+".join)
def test_concat(axis: int, wrt: list[str]) -> None:
    sizes = {"a": 3, "b": 2, "c": 1}

    def shaped(size: int) -> np.ndarray:
        shape = [2, 4, 5]
        shape[axis] = size
        return x(*shape)

    check_vjp(
        node("Concat", ["a", "b", "c"], axis=axis),
        {name: shaped(size) for name, size in sizes.items()},
        wrt,
        lambda a, b, c: torch.cat([a, b, c], dim=axis),
    )


def test_concat_dense_block() -> None:
    """DenseNet-style: the same tensor twice, a transformed copy, and a constant that needs no gradient."""
    const = x(2, 2, 3, 3)
    check_vjp(
        [helper.make_node("Relu", ["x"], ["r"]), node("Concat", ["x", "r", "c", "x"], axis=1)],
        {"x": x(2, 3, 3, 3)},
        ["x"],
        lambda t: torch.cat([t, torch.relu(t), torch.tensor(const), t], dim=1),
        constants={"c": const},
    )


@pytest.mark.parametrize(
    ("attrs", "split", "axis", "sizes"),
    [
        ({"num_outputs": 3, "axis": 1}, None, 1, [2, 2, 2]),
        ({"num_outputs": 3, "axis": -1}, None, -1, [3, 3, 1]),
        ({"axis": 2}, [1, 2, 2], 2, [1, 2, 2]),
        ({"num_outputs": 3}, None, 0, [2, 2, 2]),
    ],
    ids=["channels", "uneven_last", "split_input", "batch"],
)
def test_split_unused_output(attrs: dict, split: list[int] | None, axis: int, sizes: list[int]) -> None:
    """``Concat(part₂, part₀)``: the middle part receives no gradient (chunk → concat)."""
    inputs = ["x"] if split is None else ["x", "split"]
    constants = {} if split is None else {"split": ints(*split)}

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        parts = torch.split(t, sizes, dim=axis)
        return torch.cat([parts[2], parts[0]], dim=axis)

    check_vjp(
        [helper.make_node("Split", inputs, ["p0", "p1", "p2"], **attrs), node("Concat", ["p2", "p0"], axis=axis)],
        {"x": x(6, 6, 5, 7)},
        ["x"],
        torch_fn,
        constants=constants,
    )


def test_shufflenet_block() -> None:
    """ShuffleNetV2 unit: chunk → (identity, branch) → concat → channel shuffle (Reshape → Transpose → Reshape)."""

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        a, b = t.chunk(2, dim=1)
        y = torch.cat([a, torch.relu(b)], dim=1)
        return y.reshape(t.shape[0], 2, 4, 3, 3).transpose(1, 2).reshape(t.shape[0], 8, 3, 3)

    check_vjp(
        [
            helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("Concat", ["a", "rb"], ["cat"], axis=1),
            helper.make_node("Reshape", ["cat", "grouped"], ["g"]),
            helper.make_node("Transpose", ["g"], ["gt"], perm=[0, 2, 1, 3, 4]),
            node("Reshape", ["gt", "flat"]),
        ],
        {"x": x(2, 8, 3, 3)},
        ["x"],
        torch_fn,
        constants={"grouped": ints(0, 2, 4, 3, 3), "flat": ints(0, 8, 3, 3)},
    )


# -- slice -----------------------------------------------------------------------------------------------------------
# (starts, ends, axes, steps, the indices each sliced axis keeps, written out by hand) on an input of shape (2, 6, 7, 8)
SLICES = {
    "channels": ([1], [4], [1], None, {1: [1, 2, 3]}),
    "negative_axes_and_bounds": ([-3, 0], [INT64_MAX, -2], [-1, 2], None, {3: [5, 6, 7], 2: [0, 1, 2, 3, 4]}),
    "clamped": ([-100], [100], [3], None, {3: list(range(8))}),
    "steps_2_3": ([0, 1], [7, 8], [2, 3], [2, 3], {2: [0, 2, 4, 6], 3: [1, 4, 7]}),
    "reverse": ([-1], [INT64_MIN], [3], [-1], {3: [7, 6, 5, 4, 3, 2, 1, 0]}),
    "step_minus_2": ([5], [0], [2], [-2], {2: [5, 3, 1]}),
    "reverse_clamped_start": ([100], [2], [3], [-1], {3: [7, 6, 5, 4, 3]}),
    "mixed_unit_and_strided": ([2, 1], [5, INT64_MAX], [1, 3], [1, 2], {1: [2, 3, 4], 3: [1, 3, 5, 7]}),
}


def _slice_inputs(starts: list, ends: list, axes: list | None, steps: list | None) -> tuple[list, dict]:
    names = ["x", "starts", "ends"] + (["axes"] if axes is not None or steps is not None else [])
    constants = {"starts": ints(*starts), "ends": ints(*ends)}
    if axes is not None:
        constants["axes"] = ints(*axes)
    if steps is not None:
        names.append("steps")
        constants["steps"] = ints(*steps)
    return names, constants


@pytest.mark.parametrize(("starts", "ends", "axes", "steps", "kept"), SLICES.values(), ids=SLICES.keys())
def test_slice(starts: list, ends: list, axes: list, steps: list | None, kept: dict[int, list[int]]) -> None:
    names, constants = _slice_inputs(starts, ends, axes, steps)

    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        for axis, indices in kept.items():
            t = t.index_select(axis, torch.tensor(indices))
        return t

    check_vjp(node("Slice", names), {"x": x(2, 6, 7, 8)}, ["x"], torch_fn, constants=constants)


def test_slice_default_axes() -> None:
    """No axes input: starts/ends apply to the leading axes, so the batch axis too (its size read at run time when
    symbolic)."""
    names, constants = _slice_inputs([0, 1], [INT64_MAX, 3], None, None)
    check_vjp(node("Slice", names), {"x": x(2, 6, 7)}, ["x"], lambda t: t[:, 1:3], constants=constants)


@pytest.mark.parametrize("steps", [None, [2]], ids=["unit_step", "step_2"])
def test_slice_of_an_axis_whose_size_inference_leaves_symbolic(batch_dim: str, steps: list | None) -> None:
    """BEiT's mean pooling (``tokens[:, 1:]``) after TorchScript's ``flatten(2)``: a ``Reshape`` to
    ``[Shape(x)[0], C, -1]``, whose ``-1`` ONNX inference cannot resolve when the batch is symbolic; the sliced size
    is then read at run time."""
    nodes = [
        helper.make_node("Constant", [], ["channels_rest"], value=onnx.numpy_helper.from_array(ints(6, -1))),
        helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
        helper.make_node("Concat", ["n", "channels_rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["tokens"]),
        node("Slice", ["tokens", "one", "big", "two", *(["step"] if steps else [])]),
    ]
    constants = {"one": ints(1), "big": ints(INT64_MAX), "two": ints(2)}
    constants |= {"step": ints(*steps)} if steps else {}
    graph = helper.make_graph(
        nodes[:-1],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (2, 6, 3, 4))],
        [helper.make_tensor_value_info("tokens", onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(graph), data_prop=True).graph.output[0]
    size = inferred.type.tensor_type.shape.dim[2]
    assert size.HasField("dim_value") == (batch_dim == "static"), size  # the pattern: symbolic only with N
    step = (steps or [1])[0]
    check_vjp(nodes, {"x": x(2, 6, 3, 4)}, ["x"], lambda t: t.reshape(2, 6, 12)[:, :, 1::step], constants=constants)


# -- gather ----------------------------------------------------------------------------------------------------------
GATHERS = {
    "repeated_negative": (1, ints(4, 0, 4, -1), (slice(None), [4, 0, 4, 4])),
    "scalar": (1, np.array(2, dtype=np.int64), (slice(None), 2)),
    "scalar_negative": (-1, np.array(-2, dtype=np.int64), (Ellipsis, -2)),
    "matrix_last_axis": (-1, np.array([[0, 1], [1, 4]], dtype=np.int64), (Ellipsis, torch.tensor([[0, 1], [1, 4]]))),
    "batch_axis": (0, ints(1, 0, 1), ([1, 0, 1],)),
}


@pytest.mark.parametrize(("axis", "indices", "torch_index"), GATHERS.values(), ids=GATHERS.keys())
def test_gather_constant_indices(axis: int, indices: np.ndarray, torch_index: tuple) -> None:
    check_vjp(
        node("Gather", ["x", "i"], axis=axis),
        {"x": x(3, 5, 6)},
        ["x"],
        lambda t: t[torch_index],
        constants={"i": indices},
    )


def test_gather_runtime_indices() -> None:
    check_vjp(
        node("Gather", ["x", "i"], axis=1),
        {"x": x(2, 5, 3), "i": ints(3, -1, 3, 0)},
        ["x"],
        lambda t, i: t[:, i],
    )


def _attention_split(indices: np.ndarray) -> list[onnx.NodeProto]:
    """torchvision attention's ``q, k, v`` split as the TorchScript exporter writes it: a ``Reshape`` to
    ``Shape(x)[:Mod(2, 3)] + [3, 2]`` (ONNX data propagation does not evaluate ``Mod``, so the target's length and every
    rank after it are unknown to shape inference), ``Unsqueeze``, ``Transpose``, ``Squeeze``, then ``Gather``."""
    return [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mod", ["two", "three"], ["split"]),
        helper.make_node("Slice", ["shape", "zero", "split"], ["lead"]),
        helper.make_node("Concat", ["lead", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "zero"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=[3, 1, 2, 0, 4]),
        helper.make_node("Squeeze", ["t", "three_axis"], ["s"]),
        node("Gather", ["s", "i"], axis=0),
    ]


@pytest.mark.parametrize("indices", [np.array(2), ints(2, 0, 2)], ids=["scalar", "repeated"])
def test_gather_after_a_squeeze_of_unknown_rank(indices: np.ndarray) -> None:
    """The Gather rule needs its input's rank: derived by folding the constant ``Mod`` (vit_b_32, TorchScript)."""
    constants = {"two": ints(2), "three": ints(3), "zero": ints(0), "heads": ints(3, 2), "three_axis": ints(3)}
    constants["i"] = indices
    nodes = _attention_split(indices)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (2, 5, 6))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(graph), data_prop=True).graph
    squeezed = next((v for v in inferred.value_info if v.name == "s"), None)
    assert squeezed is None or not squeezed.type.tensor_type.HasField("shape")  # the rank is not inferred
    check_vjp(
        nodes,
        {"x": x(2, 5, 6)},
        ["x"],
        lambda t: t.reshape(2, 5, 3, 2).permute(2, 0, 1, 3)[torch.tensor(indices)],
        constants=constants,
    )


# -- expand / pad / tile ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "target"),
    [((2, 1, 4), (2, 3, 4)), ((3, 1), (2, 3, 5)), ((2, 1, 4), (1, 3, 1)), ((2, 3), (1, 3))],
    ids=str,
)
def test_expand(shape: tuple, target: tuple) -> None:
    out_shape = np.broadcast_shapes(shape, target)
    check_vjp(
        node("Expand", ["x", "shape"]),
        {"x": x(*shape)},
        ["x"],
        lambda t: torch.broadcast_to(t, out_shape),
        constants={"shape": ints(*target)},
    )


def torch_pads(pads: list[int]) -> tuple[int, ...]:
    """ONNX ``[b1, b2, …, e1, e2, …]`` → F.pad's ``(b_last, e_last, …, b1, e1)``."""
    n = len(pads) // 2
    return tuple(p for k in reversed(range(n)) for p in (pads[k], pads[n + k]))


@pytest.mark.parametrize(
    ("pads", "axes", "full_pads"),
    [
        ([0, 0, 1, 2, 0, 0, 3, 0], None, [0, 0, 1, 2, 0, 0, 3, 0]),
        ([0, 0, -1, 1, 0, 0, 2, -2], None, [0, 0, -1, 1, 0, 0, 2, -2]),
        ([1, 2, 0, 3], [2, -1], [0, 0, 1, 2, 0, 0, 0, 3]),
        ([1, 0, 0, 0, 0, 1, 0, 0], None, [1, 0, 0, 0, 0, 1, 0, 0]),
    ],
    ids=["pad", "negative", "axes", "batch_and_channels"],
)
@pytest.mark.parametrize("value", [None, 1.5])
def test_pad(pads: list[int], axes: list[int] | None, full_pads: list[int], value: float | None) -> None:
    names = ["x", "pads", "" if value is None else "value", "" if axes is None else "axes"]
    while not names[-1]:
        names.pop()
    constants = {"pads": ints(*pads)}
    if value is not None:
        constants["value"] = np.array(value, dtype=np.float32)
    if axes is not None:
        constants["axes"] = ints(*axes)
    check_vjp(
        node("Pad", names),
        {"x": x(2, 3, 4, 5)},
        ["x"],
        lambda t: F.pad(t, torch_pads(full_pads), value=value or 0.0),
        constants=constants,
    )


def test_pad_reflect_fails() -> None:
    with pytest.raises(GradientError, match="constant"):
        check_vjp(
            node("Pad", ["x", "pads"], mode="reflect"),
            {"x": x(2, 3, 4, 5)},
            ["x"],
            lambda t: F.pad(t, (1, 1, 1, 1), mode="reflect"),
            constants={"pads": ints(0, 0, 1, 1, 0, 0, 1, 1)},
        )


@pytest.mark.parametrize("repeats", [[1, 2, 3], [2, 1, 1], [1, 1, 1]], ids=str)
def test_tile(repeats: list[int]) -> None:
    check_vjp(
        node("Tile", ["x", "repeats"]),
        {"x": x(2, 3, 4)},
        ["x"],
        lambda t: t.repeat(*repeats),
        constants={"repeats": ints(*repeats)},
    )


# -- depth/space -----------------------------------------------------------------------------------------------------
def test_space_to_depth() -> None:
    def torch_fn(t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = t.shape
        return t.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(n, c * 4, h // 2, w // 2)

    check_vjp(node("SpaceToDepth", ["x"], blocksize=2), {"x": x(2, 3, 4, 6)}, ["x"], torch_fn)


def _depth_to_space_dcr(t: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


@pytest.mark.parametrize("block", [2, 3])
@pytest.mark.parametrize(
    ("mode", "torch_fn"), [("DCR", _depth_to_space_dcr), ("CRD", F.pixel_shuffle)], ids=["DCR", "CRD"]
)
def test_depth_to_space(block: int, mode: str, torch_fn: object) -> None:
    check_vjp(
        node("DepthToSpace", ["x"], blocksize=block, mode=mode),
        {"x": x(2, 2 * block * block, 3, 4)},
        ["x"],
        lambda t: torch_fn(t, block),
    )


@pytest.mark.parametrize(("half", "expected"), [(True, slice(3, None)), (False, slice(None, 3))])
def test_slice_with_runtime_bounds(half: bool, expected: slice) -> None:
    """``chunk`` traced with symbolic shapes: the bounds come from ``Shape(x)[1] / 2`` at run time."""
    bounds = ["half", "big"] if half else ["zero", "half"]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Div", ["s", "two"], ["half"]),
        helper.make_node("Slice", ["x", *bounds, "axes"], ["y"]),
    ]
    consts = {
        "two": np.array([2], np.int64),
        "zero": np.array([0], np.int64),
        "big": np.array([100], np.int64),
        "axes": np.array([1], np.int64),
    }
    x = RNG.standard_normal((2, 6, 3, 3)).astype(np.float32)
    check_vjp(nodes, {"x": x}, ["x"], lambda t: t[:, expected], constants=consts)
