"""The float64 check's memory: intermediates dropped after their last reader (inside switched parts too), and the
PyTorch path's float64 weights held once (views of PyTorch's copy shared with the graph's evaluator)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxcam_export.float64 import float64_evaluator, switched_on, to_float64
from onnxcam_export.verify_torch import float64_copy, shared_weights

from onnxcam import contract

SIDE = 1024  # one [1, SIDE, SIDE] float64 tensor: 8 MiB
CHAIN = 24


def _chain(prefix: str, start: str, length: int) -> list[onnx.NodeProto]:
    """``length`` elementwise nodes ``t_{i+1} = t_i · 1.001 + t_i`` (two reads each: a skip connection)."""
    nodes, current = [], start
    for i in range(length):
        scaled = f"{prefix}/scaled_{i}"
        nodes.append(helper.make_node("Mul", [current, "factor"], [scaled]))
        nodes.append(helper.make_node("Add", [scaled, current], [f"{prefix}/t_{i}"]))
        current = f"{prefix}/t_{i}"
    return nodes


def _switched_graph() -> onnx.ModelProto:
    """A forward chain, then a long chain behind ``If(compute:gradients)`` (off by default, as in the explainer files)
    and a second ``If`` on a switch that stays off (its else branch: an empty tensor)."""
    forward = _chain("forward", "x", 4)
    then = helper.make_graph(_chain("backward", "forward/t_3", CHAIN), "then", [], [_vi(f"backward/t_{CHAIN - 1}")])
    empty = numpy_helper.from_array(np.zeros((0, SIDE, SIDE), np.float32))
    off = helper.make_graph([helper.make_node("Constant", [], ["empty"], value=empty)], "else", [], [_vi("empty")])
    gradients = helper.make_node("If", [contract.GRADIENTS_SWITCH], ["deep"], then_branch=then, else_branch=off)
    other = helper.make_node(
        "If",
        [contract.BIAS_SWITCH],
        ["optional"],
        then_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["negated"])], "then2", [], [_vi("negated")]),
        else_branch=off,
    )
    graph = helper.make_graph(
        [*forward, gradients, other],
        "switched",
        [_vi("x"), *(_vi(s, TensorProto.BOOL, []) for s in (contract.GRADIENTS_SWITCH, contract.BIAS_SWITCH))],
        [_vi("forward/t_3"), _vi("deep"), _vi("optional")],
        initializer=[
            numpy_helper.from_array(np.array(1.001, np.float32), "factor"),
            numpy_helper.from_array(np.array(False), contract.GRADIENTS_SWITCH),
            numpy_helper.from_array(np.array(False), contract.BIAS_SWITCH),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None, SIDE, SIDE] if shape is None else shape)


def test_float64_evaluation_holds_only_live_tensors() -> None:
    """54 tensors of 8 MiB are computed; alive at once: the inputs and outputs held by the caller and ~3 others.
    ``onnx.reference``'s own ``run`` (the reference values here) holds them all (~430 MiB)."""
    model = _switched_graph()
    x = np.random.default_rng(0).standard_normal((1, SIDE, SIDE)).astype(np.float32)
    evaluate = float64_evaluator(model)
    tracemalloc.start()
    try:
        ours = evaluate({"x": x})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    reference = ReferenceEvaluator(to_float64(switched_on(model)))
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, reference.run(names, {"x": x.astype(np.float64)}), strict=True))
    for name in names:
        assert ours[name].dtype == expected[name].dtype and ours[name].shape == expected[name].shape, name
        np.testing.assert_array_equal(ours[name], expected[name])
    assert expected["deep"].shape == (1, SIDE, SIDE) and expected["optional"].shape == (0, SIDE, SIDE)
    tensor = SIDE * SIDE * 8
    assert peak < 8 * tensor, f"peak {peak / tensor:.1f} tensors of 8 MiB (all kept: {2 * (4 + CHAIN) + 1})"


def test_float64_evaluator_refuses_a_fed_switch() -> None:
    evaluate = float64_evaluator(_switched_graph())
    x = np.zeros((1, SIDE, SIDE), np.float32)
    with pytest.raises(ValueError, match="fixed in a float64 evaluator"):
        evaluate({"x": x, contract.GRADIENTS_SWITCH: np.array(False)})


class _TokensAndConv(torch.nn.Module):
    """A Linear over tokens (exported as ``MatMul`` with the weight transposed), a bias, and a Conv + BatchNorm
    (folded into one Conv by the exporter: a weight PyTorch does not hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.linear = torch.nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
        return self.linear(tokens).mean(1)


def test_pytorch_float64_weights_are_shared_not_copied(tmp_path) -> None:
    model = _TokensAndConv().eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17)
    graph = onnx.load(str(path))
    model64 = float64_copy(model)
    shared = shared_weights(graph, model64)
    linear = model64.linear.weight.detach().numpy()
    holders = [name for name, view in shared.items() if np.shares_memory(view, linear)]
    assert len(holders) == 1, sorted(shared)
    stored = numpy_helper.to_array(next(t for t in graph.graph.initializer if t.name == holders[0]))
    assert stored.shape == (8, 5)  # the MatMul operand: PyTorch's weight transposed
    np.testing.assert_array_equal(shared[holders[0]], stored.astype(np.float64))
    folded = model64.conv.weight.detach().numpy()
    assert not any(np.shares_memory(view, folded) for view in shared.values())  # BatchNorm folded in: not PyTorch's
    for name, view in shared.items():  # every shared view holds the initializer's exact values
        init = next(t for t in graph.graph.initializer if t.name == name)
        np.testing.assert_array_equal(view, numpy_helper.to_array(init).astype(np.float64))
