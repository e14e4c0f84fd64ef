"""Gemm/MatMul VJP rules vs torch autograd (float32, relative tolerance 1e-5).

Runs with a static and with a symbolic dim 0 (the ``batch_dim`` fixture of test_rules_shape.py).
"""

import gradcheck
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError
from test_rules_shape import batch_dim  # noqa: F401  (autouse: static and symbolic dim 0)

RNG = np.random.default_rng(0)


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def gemm_case(trans_a: int, trans_b: int, alpha: float, beta: float, c_shape: tuple | None, wrt: list[str]) -> None:
    """``Y = α·A'B' + β·C`` with A' 2×3, B' 3×4."""
    inputs = {"a": x(3, 2) if trans_a else x(2, 3), "b": x(4, 3) if trans_b else x(3, 4)}
    if c_shape is not None:
        inputs["c"] = x(*c_shape)

    def torch_fn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        y = alpha * (a.T if trans_a else a) @ (b.T if trans_b else b)
        return y if c is None else y + beta * c

    attrs = {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta}
    check_vjp(helper.make_node("Gemm", list(inputs), ["y"], **attrs), inputs, wrt, torch_fn)


@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (0, 1), (1, 0), (1, 1)], ids=lambda t: f"t{t}")
@pytest.mark.parametrize("wrt", [["a"], ["b"], ["a", "b", "c"]], ids="+".join)
def test_gemm_transposes(trans_a: int, trans_b: int, wrt: list[str]) -> None:
    gemm_case(trans_a, trans_b, 0.5, 2.0, (4,), wrt)


@pytest.mark.parametrize("c_shape", [(2, 4), (4,), (1, 4), (2, 1), (), None], ids=str)
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (1.5, -0.5)], ids=str)
def test_gemm_bias(c_shape: tuple | None, alpha: float, beta: float) -> None:
    gemm_case(0, 1, alpha, beta, c_shape, ["a", "b"] if c_shape is None else ["a", "b", "c"])


def test_gemm_linear_layer() -> None:
    """``nn.Linear`` as exported: constant weight (transB=1) and bias; only the activation is differentiated."""
    weight, bias = x(4, 3), x(4)
    check_vjp(
        helper.make_node("Gemm", ["a", "w", "bias"], ["y"], transB=1),
        {"a": x(2, 3)},
        ["a"],
        lambda a: torch.nn.functional.linear(a, torch.tensor(weight), torch.tensor(bias)),
        constants={"w": weight, "bias": bias},
    )


MATMUL_SHAPES = [
    ((2, 3), (3, 4)),
    ((2, 3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (1, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)),
    ((3,), (3, 4)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
    ((4,), (4,)),
]


@pytest.mark.parametrize(("a_shape", "b_shape"), MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("wrt", [["a", "b"], ["a"], ["b"]], ids="+".join)
def test_matmul(a_shape: tuple, b_shape: tuple, wrt: list[str]) -> None:
    check_vjp(
        helper.make_node("MatMul", ["a", "b"], ["y"]),
        {"a": x(*a_shape), "b": x(*b_shape)},
        wrt,
        torch.matmul,
    )


def test_matmul_same_operand_twice() -> None:
    """``Y = A·A`` (square): both contributions reach ``A``."""
    check_vjp(helper.make_node("MatMul", ["a", "a"], ["y"]), {"a": x(2, 3, 3)}, ["a"], lambda a: a @ a)


def test_matmul_constant_weight() -> None:
    weight = x(4, 5)
    check_vjp(
        helper.make_node("MatMul", ["a", "w"], ["y"]),
        {"a": x(2, 3, 4)},
        ["a"],
        lambda a: a @ torch.tensor(weight),
        constants={"w": weight},
    )


# id: (equation, operand shapes)
EINSUM = {
    "attention_scores": ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    "attention_values": ("bhij,bhjd->bhid", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    "channel_mix": ("nchw,oc->nohw", [(2, 3, 4, 5), (6, 3)]),
    "bilinear_pool": ("nchw,ndhw->ncd", [(2, 3, 4, 5), (2, 2, 4, 5)]),
    "outer": ("ni,nj->nij", [(2, 3), (2, 4)]),
    "ellipsis_matmul": ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 2)]),
    "implicit_output": ("nij,njk", [(2, 3, 4), (2, 4, 5)]),
    "summed_only_in_first": ("nij,nk->nk", [(2, 3, 4), (2, 5)]),
    "transpose": ("nchw->nhwc", [(2, 3, 4, 5)]),
    "reduce": ("nchw->nc", [(2, 3, 4, 5)]),
    "three_operands": ("ni,ij,jk->nk", [(2, 3), (3, 4), (4, 5)]),
    "spaces": ("n c, n c -> n", [(2, 3), (2, 3)]),
}


@pytest.mark.parametrize(("equation", "shapes"), EINSUM.values(), ids=list(EINSUM))
def test_einsum(equation: str, shapes: list[tuple[int, ...]]) -> None:
    inputs = {f"x{i}": x(*s) for i, s in enumerate(shapes)}
    node = helper.make_node("Einsum", list(inputs), ["y"], equation=equation)
    check_vjp(node, inputs, list(inputs), lambda *ts: torch.einsum(equation, *ts))


def test_einsum_same_operand_twice() -> None:
    node = helper.make_node("Einsum", ["a", "a"], ["y"], equation="nij,nkj->nik")
    check_vjp(node, {"a": x(2, 3, 4)}, ["a"], lambda t: torch.einsum("nij,nkj->nik", t, t))


def test_einsum_diagonal_is_refused() -> None:
    node = helper.make_node("Einsum", ["a"], ["y"], equation="nii->ni")
    with pytest.raises(GradientError, match="repeated within one term"):
        check_vjp(node, {"a": x(2, 3, 3)}, ["a"], lambda t: torch.einsum("nii->ni", t))


# id: (Q/K/V shapes [B, heads, S, D], mask kind, is_causal, scale attribute)
ATTENTION = {
    "plain": ([(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)], None, 0, None),
    "scale": ([(2, 2, 4, 5), (2, 2, 4, 5), (2, 2, 4, 5)], None, 0, 0.3),
    "causal": ([(2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)], None, 1, None),
    "float_mask": ([(2, 2, 4, 5), (2, 2, 6, 5), (2, 2, 6, 5)], "float", 0, None),
    "bool_mask": ([(2, 2, 4, 5), (2, 2, 6, 5), (2, 2, 6, 5)], "bool", 0, None),
}


@pytest.mark.parametrize("case", ATTENTION.values(), ids=list(ATTENTION))
def test_attention(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    shapes, mask_kind, causal, scale = case
    monkeypatch.setattr(gradcheck, "OPSET", 23)
    inputs = dict(zip("qkv", (x(*s) for s in shapes), strict=True))
    constants, names = {}, ["q", "k", "v"]
    mask = None
    if mask_kind:
        s_q, s_kv = shapes[0][2], shapes[1][2]
        mask = x(1, 1, s_q, s_kv) if mask_kind == "float" else RNG.random((s_q, s_kv)) < 0.7
        if mask_kind == "bool":
            mask[:, 0] = True  # every row keeps a key
        constants["mask"] = mask
        names.append("mask")
    attrs = {"is_causal": causal} | ({"scale": scale} if scale is not None else {})
    node = helper.make_node("Attention", names, ["y"], **attrs)
    t_mask = None if mask is None else torch.tensor(mask)

    def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, t_mask, is_causal=bool(causal), scale=scale)

    check_vjp(node, inputs, list(inputs), reference, constants=constants)


def test_attention_kv_cache_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gradcheck, "OPSET", 23)
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y"])
    inputs = {"q": x(1, 2, 3, 4), "k": x(1, 2, 3, 4), "v": x(1, 2, 3, 4)}
    with pytest.raises(GradientError, match="no past key/value"):
        check_vjp(node, inputs, ["q"], lambda *t: t[0], constants={"pk": x(1, 2, 2, 4), "pv": x(1, 2, 2, 4)})
