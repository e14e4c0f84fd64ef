"""Reduce* VJP rules vs torch autograd (float32, relative tolerance 1e-5).

Runs with a static and with a symbolic dim 0 (the ``batch_dim`` fixture of test_rules_shape.py); reducing over the
symbolic dim makes ``ReduceMean`` count its elements at run time.
"""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from gradcheck import check_vjp
from onnx import helper
from test_rules_shape import batch_dim  # noqa: F401  (autouse: static and symbolic dim 0)

RNG = np.random.default_rng(0)
SHAPE = (2, 3, 4, 5)
Reduce = Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]


def prod(t: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """``torch.prod`` over several dims (one at a time, from the last, so the dim numbers stay valid)."""
    for d in sorted((d % t.dim() for d in dims), reverse=True):
        t = t.prod(d, keepdim=keepdim)
    return t


# op: (torch reduction over dims, the element-wise op it becomes when nothing is reduced)
REDUCTIONS: dict[str, tuple[Reduce, Callable[[torch.Tensor], torch.Tensor]]] = {
    "ReduceSum": (lambda t, d, k: t.sum(d, keepdim=k), lambda t: t),
    "ReduceMean": (lambda t, d, k: t.mean(d, keepdim=k), lambda t: t),
    "ReduceMax": (lambda t, d, k: t.amax(d, keepdim=k), lambda t: t),
    "ReduceMin": (lambda t, d, k: t.amin(d, keepdim=k), lambda t: t),
    "ReduceSumSquare": (lambda t, d, k: (t * t).sum(d, keepdim=k), lambda t: t * t),
    "ReduceL2": (lambda t, d, k: torch.linalg.vector_norm(t, 2, d, keepdim=k), torch.abs),
    "ReduceL1": (lambda t, d, k: t.abs().sum(d, keepdim=k), torch.abs),
    "ReduceLogSumExp": (lambda t, d, k: torch.logsumexp(t, d, keepdim=k), lambda t: t),
    "ReduceLogSum": (lambda t, d, k: t.sum(d, keepdim=k).log(), torch.log),
    "ReduceProd": (lambda t, d, k: prod(t, d, k), lambda t: t),
}
# id: (the axes input, or None for no input; noop_with_empty_axes; the dims torch reduces, () for none)
AXES = {
    "channel": ([1], 0, (1,)),
    "last_negative": ([-1], 0, (3,)),
    "spatial": ([2, 3], 0, (2, 3)),
    "spatial_negative": ([-2, -1], 0, (2, 3)),
    "batch_and_height": ([0, 2], 0, (0, 2)),
    "absent": (None, 0, (0, 1, 2, 3)),
    "empty": ([], 0, (0, 1, 2, 3)),
    "empty_noop": ([], 1, ()),
    "absent_noop": (None, 1, ()),
}


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def reduce_case(op: str, value: np.ndarray, axes: list[int] | None, noop: int, dims: tuple, keepdims: int) -> None:
    reduce, elementwise = REDUCTIONS[op]
    inputs = ["x"] if axes is None else ["x", "axes"]
    constants = {} if axes is None else {"axes": np.array(axes, dtype=np.int64)}
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims, noop_with_empty_axes=noop)
    torch_fn = (lambda t: reduce(t, dims, bool(keepdims))) if dims else elementwise
    check_vjp(node, {"x": value}, ["x"], torch_fn, constants=constants)


@pytest.mark.parametrize("keepdims", [1, 0])
@pytest.mark.parametrize(("axes", "noop", "dims"), AXES.values(), ids=AXES.keys())
@pytest.mark.parametrize("op", list(REDUCTIONS))
def test_reduce(op: str, axes: list[int] | None, noop: int, dims: tuple, keepdims: int) -> None:
    value = np.abs(x(*SHAPE)) + 0.1 if op == "ReduceLogSum" else x(*SHAPE)
    if op == "ReduceProd":  # magnitudes near 1: a product of 120 standard normals can underflow float32
        value = np.sign(value) * RNG.uniform(0.7, 1.4, SHAPE).astype(np.float32)
    reduce_case(op, value, axes, noop, dims, keepdims)


@pytest.mark.parametrize("keepdims", [1, 0])
@pytest.mark.parametrize("axes", [[1], [2, 3], None], ids=str)
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_extremum_ties(op: str, axes: list[int] | None, keepdims: int) -> None:
    """Many exact ties (small integers, an all-zero channel): the gradient is split equally, as ``torch.amax``."""
    value = RNG.integers(-2, 3, SHAPE).astype(np.float32)
    value[:, 1] = 0.0
    dims = (0, 1, 2, 3) if axes is None else tuple(axes)
    reduce_case(op, value, axes, 0, dims, keepdims)


@pytest.mark.parametrize("op", ["ReduceL2", "ReduceL1"])
def test_reduce_norm_at_zero(op: str) -> None:
    """A slice that is all zeros: the (sub)gradient there is 0, as in torch."""
    value = x(*SHAPE)
    value[0, :, 1, 2] = 0.0
    reduce_case(op, value, [1], 0, (1,), 1)


@pytest.mark.parametrize("keepdims", [1, 0])
@pytest.mark.parametrize("axes", [[1], [2, 3], None], ids=str)
def test_reduce_prod_with_zeros(axes: list[int] | None, keepdims: int) -> None:
    """Slices with no zero, one zero (its gradient is the product of the others) and two zeros (all 0)."""
    value = (np.sign(x(*SHAPE)) * RNG.uniform(0.7, 1.4, SHAPE)).astype(np.float32)
    value[0, 0, 1, 2] = 0.0
    value[1, 2, 0, 1] = value[1, 2, 3, 4] = value[1, 1, 0, 1] = 0.0
    dims = (0, 1, 2, 3) if axes is None else tuple(axes)
    reduce_case("ReduceProd", value, axes, 0, dims, keepdims)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_cum_sum(axis: int, exclusive: int, reverse: int) -> None:
    def reference(t: torch.Tensor) -> torch.Tensor:
        t = t.flip(axis) if reverse else t
        y = t.cumsum(axis) - (t if exclusive else 0)
        return y.flip(axis) if reverse else y

    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    check_vjp(node, {"x": x(*SHAPE)}, ["x"], reference, constants={"axis": np.array(axis, np.int64)})
