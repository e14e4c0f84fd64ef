"""Normalization VJPs (w.r.t. the data input) vs torch autograd (float32, relative tolerance 1e-5)."""

import gradcheck
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp, run_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError
from test_rules_conv import symbolic_x  # noqa: F401  (a fixture)

RNG = np.random.default_rng(0)


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return RNG.uniform(0.2, 2.0, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4), (2, 3, 7), (2, 2, 3, 4, 5)], ids=["2d", "0d", "1d", "3d"])
@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_batch_normalization(shape: tuple[int, ...], epsilon: float) -> None:
    c = shape[1]
    stats = {"scale": x(c), "bias": x(c), "mean": x(c), "var": positive(c)}
    node = helper.make_node("BatchNormalization", ["x", *stats], ["y"], epsilon=epsilon)
    t_stats = {k: torch.tensor(v) for k, v in stats.items()}

    def reference(t: torch.Tensor) -> torch.Tensor:
        s = t_stats
        return F.batch_norm(t, s["mean"], s["var"], s["scale"], s["bias"], training=False, eps=epsilon)

    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants=stats)


def test_batch_normalization_training_mode_is_refused() -> None:
    c, names = 3, ["scale", "bias", "mean", "var"]
    stats = {k: positive(c) for k in names}
    node = helper.make_node("BatchNormalization", ["x", *names], ["y"], training_mode=1)
    with pytest.raises(GradientError, match="training_mode"):
        check_vjp(node, {"x": x(2, c, 4, 4)}, ["x"], lambda t: t, constants=stats)


# id: (input shape, axis, epsilon, with bias)
LAYER_NORM_CASES = {
    "last_axis": ((2, 7, 16), -1, 1e-5, True),
    "axis_minus2": ((2, 3, 4, 5), -2, 1e-5, True),
    "axis1_no_bias": ((2, 3, 4, 5), 1, 1e-3, False),
    "axis3_positive": ((2, 3, 4, 5), 3, 1e-5, False),
    "axis_minus3_of_3": ((2, 6, 5), -3, 1e-5, True),
}


@pytest.mark.parametrize("case", LAYER_NORM_CASES.values(), ids=list(LAYER_NORM_CASES))
def test_layer_normalization(case: tuple) -> None:
    shape, axis, epsilon, with_bias = case
    normalized = shape[axis:]
    params = {"gamma": x(*normalized)} | ({"beta": x(*normalized)} if with_bias else {})
    node = helper.make_node("LayerNormalization", ["x", *params], ["y"], axis=axis, epsilon=epsilon)
    weight, bias = (torch.tensor(params[k]) if k in params else None for k in ("gamma", "beta"))

    def reference(t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, normalized, weight, bias, eps=epsilon)

    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants=params)


def test_layer_normalization_unused_statistics_outputs() -> None:
    """A node that also declares Mean/InvStdDev outputs (unused downstream) differentiates as usual."""
    gamma = x(16)
    node = helper.make_node("LayerNormalization", ["x", "gamma"], ["y", "mean", "inv_std"])
    reference = lambda t: F.layer_norm(t, (16,), torch.tensor(gamma))  # noqa: E731
    check_vjp(node, {"x": x(2, 7, 16)}, ["x"], reference, constants={"gamma": gamma})


def test_layer_normalization_statistics_on_the_path_are_refused() -> None:
    gamma = x(16)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma"], ["n", "mean", "inv_std"]),
        helper.make_node("Add", ["n", "mean"], ["y"]),
    ]

    def reference(t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, (16,), torch.tensor(gamma), eps=1e-5) + t.mean(-1, keepdim=True)

    with pytest.raises(GradientError, match="Mean/InvStdDev"):
        check_vjp(nodes, {"x": x(2, 7, 16)}, ["x"], reference, constants={"gamma": gamma})


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 9), (2, 2, 3, 4, 5)], ids=["2d", "1d", "3d"])
@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_instance_normalization(shape: tuple[int, ...], epsilon: float) -> None:
    c = shape[1]
    params = {"scale": x(c), "bias": x(c)}
    node = helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=epsilon)
    scale, bias = torch.tensor(params["scale"]), torch.tensor(params["bias"])
    reference = lambda t: F.instance_norm(t, weight=scale, bias=bias, eps=epsilon)  # noqa: E731
    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants=params)


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("op", ["BatchNormalization", "LayerNormalization", "InstanceNormalization"])
def test_normalization_dynamic_dims(op: str) -> None:
    """No dim of x known at export: only the rank is used."""
    if op == "BatchNormalization":
        test_batch_normalization((2, 3, 5, 6), 1e-5)
    elif op == "LayerNormalization":
        test_layer_normalization(LAYER_NORM_CASES["axis_minus2"])
    else:
        test_instance_normalization((2, 3, 5, 6), 1e-5)


# id: (input shape, size, alpha, beta, bias); onnxruntime's LRN takes only 4-D inputs and odd sizes, for which the
# ONNX channel window [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉] is torch's local_response_norm window.
LRN_CASES = {
    "alexnet_size5": ((2, 7, 4, 5), 5, 1e-4, 0.75, 2.0),
    "size3_strong": ((2, 6, 3, 3), 3, 0.5, 0.75, 1.0),
    "size1": ((2, 3, 4, 4), 1, 0.2, 1.0, 1.0),
    "size7_wider_than_channels": ((2, 4, 3, 3), 7, 0.5, 0.5, 1.0),
}


@pytest.mark.parametrize("case", LRN_CASES.values(), ids=list(LRN_CASES))
def test_lrn(case: tuple) -> None:
    shape, size, alpha, beta, bias = case
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    check_vjp(node, {"x": x(*shape)}, ["x"], lambda t: F.local_response_norm(t, size, alpha, beta, bias))


# id: (input shape, groups, epsilon)
GROUP_NORM_CASES = {
    "2d_g2": ((2, 6, 4, 5), 2, 1e-5),
    "2d_g1_layer_like": ((2, 4, 3, 3), 1, 1e-5),
    "2d_g_eq_c": ((2, 4, 3, 5), 4, 0.1),
    "1d_g3": ((2, 6, 7), 3, 1e-5),
    "3d_g2": ((2, 4, 2, 3, 4), 2, 1e-5),
}


@pytest.mark.parametrize("case", GROUP_NORM_CASES.values(), ids=list(GROUP_NORM_CASES))
def test_group_normalization(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, groups, epsilon = case
    monkeypatch.setattr(gradcheck, "OPSET", 21)
    params = {"scale": x(shape[1]), "bias": x(shape[1])}
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=groups, epsilon=epsilon)
    weight, bias = (torch.tensor(params[k]) for k in params)
    reference = lambda t: F.group_norm(t, groups, weight, bias, eps=epsilon)  # noqa: E731
    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants=params)


def test_group_normalization_per_group_scale_is_refused() -> None:
    """Opset 18's per-group scale (deprecated; the checker refuses the model, so only the rule is run)."""
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2)
    with pytest.raises(GradientError, match="one scale per channel"):
        run_vjp([node], {"x": x(2, 6, 3, 3)}, ["x"], "y", x(2, 6, 3, 3), constants={"scale": x(2), "bias": x(2)})


# id: (input shape, axis, epsilon)
RMS_NORM_CASES = {
    "last_axis": ((2, 7, 16), -1, 1e-5),
    "axis1": ((2, 3, 4, 5), 1, 1e-5),
    "axis_minus2": ((2, 3, 4), -2, 0.1),
}


@pytest.mark.parametrize("case", RMS_NORM_CASES.values(), ids=list(RMS_NORM_CASES))
def test_rms_normalization(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, axis, epsilon = case
    monkeypatch.setattr(gradcheck, "OPSET", 23)
    normalized = shape[axis:]
    gamma = x(*normalized)
    node = helper.make_node("RMSNormalization", ["x", "gamma"], ["y"], axis=axis, epsilon=epsilon)
    reference = lambda t: F.rms_norm(t, normalized, torch.tensor(gamma), eps=epsilon)  # noqa: E731
    check_vjp(node, {"x": x(*shape)}, ["x"], reference, constants={"gamma": gamma})


@pytest.mark.parametrize(("p", "axis"), [(2, -1), (2, 1), (1, -1), (1, 0)])
def test_lp_normalization(p: int, axis: int) -> None:
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
    check_vjp(node, {"x": x(2, 3, 4, 5)}, ["x"], lambda t: F.normalize(t, p=p, dim=axis))


@pytest.mark.usefixtures("symbolic_x")
@pytest.mark.parametrize("op", ["GroupNormalization", "RMSNormalization"])
def test_new_normalization_dynamic_dims(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if op == "GroupNormalization":
        test_group_normalization(GROUP_NORM_CASES["2d_g2"], monkeypatch)
    else:
        test_rms_normalization(RMS_NORM_CASES["axis1"], monkeypatch)


@pytest.mark.parametrize("axes", [[0, 2, 3], [2, 3], [1], [0, 1, 2, 3]], ids=str)
def test_mean_variance_normalization(axes: list[int]) -> None:
    """(Without ``axes`` the ONNX checker itself fails on the op's function body, so the default is written out.)"""
    dims = tuple(axes)
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=axes)

    def reference(t: torch.Tensor) -> torch.Tensor:
        centred = t - t.mean(dims, keepdim=True)
        return centred / (centred * centred).mean(dims, keepdim=True).sqrt()

    check_vjp(node, {"x": x(2, 3, 4, 5)}, ["x"], reference)
