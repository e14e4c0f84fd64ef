"""Gather/scatter-style VJPs (GatherElements, GatherND, ScatterElements, ScatterND, TopK) and Trilu vs torch
autograd (float32, relative tolerance 1e-5). Repeated indices check that gathered gradients add up."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp, run_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError
from test_rules_shape import batch_dim  # noqa: F401  (autouse: static and symbolic dim 0)

RNG = np.random.default_rng(0)
SHAPE = (2, 3, 4, 5)


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("negative", [False, True])
def test_gather_elements(axis: int, negative: bool) -> None:
    shape = list(SHAPE)
    shape[axis] = 6  # more picks than positions: repeats
    indices = RNG.integers(0, SHAPE[axis], shape)
    onnx_indices = indices - SHAPE[axis] if negative else indices
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)
    check_vjp(
        node,
        {"x": x(*SHAPE)},
        ["x"],
        lambda t: torch.gather(t, axis, torch.tensor(indices)),
        constants={"i": onnx_indices.astype(np.int64)},
    )


def torch_gather_nd(t: torch.Tensor, indices: np.ndarray, batch_dims: int) -> torch.Tensor:
    """ONNX GatherND by advanced indexing (recursing over the batch dims)."""
    if batch_dims:
        return torch.stack([torch_gather_nd(t[b], indices[b], batch_dims - 1) for b in range(t.shape[0])])
    return t[tuple(torch.tensor(indices[..., i]) for i in range(indices.shape[-1]))]


# id: (data shape, indices shape, batch_dims); the last index dim q picks q leading (non-batch) dims
GATHER_ND = {
    "q1": (SHAPE, (5, 1), 0),
    "q2_grid": (SHAPE, (3, 2, 2), 0),
    "q4_elements": (SHAPE, (7, 4), 0),
    "batch1_q1": (SHAPE, (2, 4, 1), 1),
    "batch1_q2": (SHAPE, (2, 3, 2), 1),
    "batch2_q1": (SHAPE, (2, 3, 6, 1), 2),
}


@pytest.mark.parametrize("case", GATHER_ND.values(), ids=list(GATHER_ND))
def test_gather_nd(case: tuple) -> None:
    shape, index_shape, batch_dims = case
    limits = shape[batch_dims : batch_dims + index_shape[-1]]
    indices = np.stack([RNG.integers(0, n, index_shape[:-1]) for n in limits], axis=-1).astype(np.int64)
    node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)
    check_vjp(
        node, {"x": x(*shape)}, ["x"], lambda t: torch_gather_nd(t, indices, batch_dims), constants={"i": indices}
    )


def distinct_indices(shape: tuple[int, ...], axis: int, picks: int) -> np.ndarray:
    """Indices along ``axis`` that are distinct within each line (a random permutation's first ``picks``)."""
    lines = np.moveaxis(np.zeros(shape), axis, -1).shape[:-1]
    chosen = np.argsort(RNG.random((*lines, shape[axis])), axis=-1)[..., :picks]
    return np.moveaxis(chosen, -1, axis).astype(np.int64)


@pytest.mark.parametrize("reduction", ["none", "add"])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("wrt", [["x", "u"], ["x"], ["u"]], ids="+".join)
def test_scatter_elements(reduction: str, axis: int, wrt: list[str]) -> None:
    indices = distinct_indices(SHAPE, axis, 2)
    updates = x(*indices.shape)
    node = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=axis, reduction=reduction)
    index = torch.tensor(indices)

    def reference(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return t.scatter_add(axis, index, u) if reduction == "add" else t.scatter(axis, index, u)

    check_vjp(node, {"x": x(*SHAPE), "u": updates}, wrt, reference, constants={"i": indices})


@pytest.mark.parametrize("reduction", ["none", "add"])
@pytest.mark.parametrize("q", [1, 2, 4])
def test_scatter_nd(reduction: str, q: int) -> None:
    picks = RNG.permutation(int(np.prod(SHAPE[:q])))[:3]  # distinct positions
    indices = np.stack(np.unravel_index(picks, SHAPE[:q]), axis=-1).astype(np.int64)
    updates = x(len(picks), *SHAPE[q:])
    node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction=reduction)
    where = tuple(torch.tensor(indices[:, i]) for i in range(q))

    def reference(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return t.index_put(where, u, accumulate=reduction == "add")

    check_vjp(node, {"x": x(*SHAPE), "u": updates}, ["x", "u"], reference, constants={"i": indices})


def test_scatter_mul_is_refused() -> None:
    node = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction="mul")
    indices = distinct_indices(SHAPE, 1, 2)
    with pytest.raises(GradientError, match="reduction 'mul'"):
        check_vjp(node, {"x": x(*SHAPE), "u": x(*indices.shape)}, ["x"], lambda t, u: t, constants={"i": indices})


@pytest.mark.parametrize(("axis", "largest", "k"), [(-1, 1, 2), (1, 0, 3), (2, 1, 4)])
def test_top_k(axis: int, largest: int, k: int) -> None:
    node = helper.make_node("TopK", ["x", "k"], ["y", "indices"], axis=axis, largest=largest)

    def reference(t: torch.Tensor) -> torch.Tensor:
        return torch.topk(t, k, axis, largest=bool(largest)).values

    check_vjp(node, {"x": x(*SHAPE)}, ["x"], reference, constants={"k": np.array([k], np.int64)})


@pytest.mark.parametrize(("upper", "k"), [(1, None), (0, None), (1, 2), (0, -1)])
def test_trilu(upper: int, k: int | None) -> None:
    inputs, constants = (["x"], {}) if k is None else (["x", "k"], {"k": np.array(k, np.int64)})
    node = helper.make_node("Trilu", inputs, ["y"], upper=upper)
    offset = k or 0
    check_vjp(
        node,
        {"x": x(*SHAPE)},
        ["x"],
        (lambda t: torch.triu(t, offset)) if upper else (lambda t: torch.tril(t, offset)),
        constants=constants,
    )


@pytest.mark.parametrize("axis", [None, 1, -1])
def test_compress(axis: int | None) -> None:
    n = int(np.prod(SHAPE)) if axis is None else SHAPE[axis]
    condition = RNG.random(n) < 0.5
    condition[0] = True
    node = helper.make_node("Compress", ["x", "c"], ["y"], **({} if axis is None else {"axis": axis}))
    keep = torch.tensor(np.flatnonzero(condition))

    def reference(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1)[keep] if axis is None else t.index_select(axis % t.dim(), keep)

    check_vjp(node, {"x": x(*SHAPE)}, ["x"], reference, constants={"c": condition})


@pytest.mark.parametrize(("size", "axes"), [((2, 3, 2, 7), None), ((6, 3), [2, 3]), ((3, 2), [-2, -1])], ids=str)
def test_center_crop_pad(size: tuple[int, ...], axes: list[int] | None) -> None:
    """Crop and pad at once (4 → 2 rows, 5 → 7 columns; odd differences put the extra row/column at the end)."""
    node = helper.make_node("CenterCropPad", ["x", "s"], ["y"], **({} if axes is None else {"axes": axes}))
    full = SHAPE[:2] + size[-2:] if axes else size

    def reference(t: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, s in zip(reversed(t.shape), reversed(full), strict=True):
            begin = (s - n) // 2 if s >= n else -((n - s) // 2)
            pads += [begin, (s - n) - begin]
        return F.pad(t, pads)

    check_vjp(node, {"x": x(*SHAPE)}, ["x"], reference, constants={"s": np.array(size, np.int64)})


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis: int, time_axis: int) -> None:
    shape = (5, 3, 4) if time_axis == 0 else (3, 5, 4)
    lengths = np.array([5, 1, 3], np.int64)
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=batch_axis, time_axis=time_axis)

    def reference(t: torch.Tensor) -> torch.Tensor:
        rows = []
        for b, n in enumerate(lengths):
            seq = t.select(batch_axis, b)  # [time, 4]
            rows.append(torch.cat([seq[:n].flip(0), seq[n:]]))
        return torch.stack(rows, batch_axis)

    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants={"lens": lengths})


@pytest.mark.parametrize("op", ["GatherElements", "MaxPool"])
def test_scatter_added_gradient_in_float16(op: str) -> None:
    """float16 graphs (FCOS converted to float16): onnxruntime's CPU ScatterElements has no float16 ``add``, so the
    scatter-added VJPs (GatherElements, MaxPool's routing) run it in float32 and cast back. Against float64 autograd
    of the same float16 values, relative 2e-3 (float16 rounding of the summed repeats)."""
    value = x(*SHAPE).astype(np.float16)
    if op == "GatherElements":
        indices = RNG.integers(0, SHAPE[1], (2, 6, 4, 5))  # repeats: gradients add up
        node = helper.make_node(op, ["x", "i"], ["y"], axis=1)
        constants = {"i": indices.astype(np.int64)}

        def reference(t: torch.Tensor) -> torch.Tensor:
            return torch.gather(t, 1, torch.tensor(indices))
    else:
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[1, 1])
        constants = None

        def reference(t: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(t, 3, 1)

    t = torch.tensor(value.astype(np.float64), requires_grad=True)
    out = reference(t)
    seed = RNG.standard_normal(out.shape).astype(np.float16)
    (expected,) = torch.autograd.grad(out, [t], torch.tensor(seed.astype(np.float64)))
    _, (ours,) = run_vjp([node], {"x": value}, ["x"], "y", seed, constants)
    assert ours.dtype == np.float16
    assert np.abs(ours - expected.numpy()).max() <= 2e-3 * np.abs(expected.numpy()).max()
