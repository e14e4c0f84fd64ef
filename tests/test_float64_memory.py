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
from onnx.reference.op_run import OpRun
from onnxcam_export import large_protos
from onnxcam_export.autodiff.graph_info import GraphInfo
from onnxcam_export.autodiff.shape_folding import MAX_FOLDED
from onnxcam_export.float64 import CouldNotVerify, float64_evaluator, switched_on, to_float64
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


# -- the freeing evaluation against onnx.reference's own run (subgraphs, names, switches) ---------------------------
SMALL = [2]


def _small(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, SMALL if shape is None else shape)


def _graph(nodes: list, inputs: list, outputs: list, initializer: list = (), functions: list = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializer))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def _branch(name: str, nodes: list, output: str, initializer: list = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [_small(output)], initializer=list(initializer))


def _scaled(name: str, scale: float) -> onnx.GraphProto:
    """``t = x · c`` with its own initializer ``c`` (the same name in every such branch)."""
    c = numpy_helper.from_array(np.full(SMALL, scale, np.float32), "c")
    return _branch(name, [helper.make_node("Mul", ["x", "c"], [f"{name}/t"])], f"{name}/t", [c])


def _negated(name: str) -> onnx.GraphProto:
    return _branch(name, [helper.make_node("Neg", ["x"], [f"{name}/n"])], f"{name}/n")


ON = numpy_helper.from_array(np.array(True), "on")
X, COND = _small("x"), _small("cond", TensorProto.BOOL, [])


def _sibling_names() -> onnx.ModelProto:
    """Two ``If`` s on the constant ``on`` whose then-branches both hold an initializer ``c`` (sibling subgraphs may
    reuse names)."""
    nodes = [
        helper.make_node("If", ["on"], ["y1"], then_branch=_scaled("a", 2.0), else_branch=_negated("na")),
        helper.make_node("If", ["on"], ["y2"], then_branch=_scaled("b", 3.0), else_branch=_negated("nb")),
    ]
    return _graph(nodes, [X], [_small("y1"), _small("y2")], [ON])


def _real_if_before_a_switch() -> onnx.ModelProto:
    """An ``If`` on the input ``cond`` whose branch holds an initializer ``c``, then one on the constant ``on`` whose
    branch holds another ``c``: inlined, the latter would be in the context the former's branch runs in."""
    nodes = [
        helper.make_node("If", ["cond"], ["y1"], then_branch=_scaled("a", 3.0), else_branch=_negated("na")),
        helper.make_node("If", ["on"], ["y2"], then_branch=_scaled("b", 2.0), else_branch=_negated("nb")),
    ]
    return _graph(nodes, [X, COND], [_small("y1"), _small("y2")], [ON])


def _real_if_reading_outer_tensors() -> onnx.ModelProto:
    """``a``, ``b`` read only inside an ``If`` on an input (then ``a·b``, else ``a − b``); its output read later."""
    then = _branch("then", [helper.make_node("Mul", ["a", "b"], ["ab"])], "ab")
    other = _branch("else", [helper.make_node("Sub", ["a", "b"], ["a_b"])], "a_b")
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Exp", ["x"], ["b"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        helper.make_node("Mul", ["y", "y"], ["z"]),  # one node reading a tensor twice
    ]
    return _graph(nodes, [X, COND], [_small("z")])


def _loop_and_scan_reading_outer_tensors() -> onnx.ModelProto:
    """A ``Loop`` adding the outer ``a`` 3 times and a ``Scan`` multiplying by the outer ``s``, both their last
    readers."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["go"], ["go_on"]), helper.make_node("Add", ["v", "a"], ["v_next"])],
        "loop",
        [_small("i", TensorProto.INT64, []), _small("go", TensorProto.BOOL, []), _small("v")],
        [_small("go_on", TensorProto.BOOL, []), _small("v_next")],
    )
    scan = helper.make_graph(
        [helper.make_node("Add", ["acc", "e"], ["acc_next"]), helper.make_node("Mul", ["e", "s"], ["scaled"])],
        "scan",
        [_small("acc", shape=[]), _small("e", shape=[])],
        [_small("acc_next", shape=[]), _small("scaled", shape=[])],
    )
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Loop", ["trips", "", "x"], ["looped"], body=body),
        helper.make_node("Scan", ["zero", "looped"], ["total", "each"], body=scan, num_scan_inputs=1),
    ]
    constants = [
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
    ]
    return _graph(nodes, [X], [_small("total", shape=[]), _small("each")], constants)


def _nested_switches() -> onnx.ModelProto:
    """A constant ``If`` inside a constant ``If`` 's taken branch, which also reads an optional input left out."""
    inner = helper.make_node("If", ["on"], ["inner"], then_branch=_negated("in_then"), else_branch=_scaled("in", 5.0))
    outer = [inner, helper.make_node("Clip", ["inner", "", "top"], ["clipped"])]
    nodes = [
        helper.make_node("If", ["on"], ["y"], then_branch=_branch("out", outer, "clipped"), else_branch=_negated("e"))
    ]
    return _graph(nodes, [X], [_small("y")], [ON, numpy_helper.from_array(np.array(1.0, np.float32), "top")])


def _local_function() -> onnx.ModelProto:
    square = helper.make_function("local", "Square", ["u"], ["v"], [helper.make_node("Mul", ["u", "u"], ["v"])], [])
    square.opset_import.extend([helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Square", ["x"], ["sq"], domain="local"), helper.make_node("Add", ["sq", "w"], ["y"])]
    weight = numpy_helper.from_array(np.array([0.5, -1.5], np.float32), "w")
    return _graph(nodes, [X], [_small("y")], [weight], [square])


@pytest.mark.parametrize(
    ("make", "names", "cond"),
    [
        pytest.param(_sibling_names, None, None, id="sibling-switches"),
        pytest.param(_real_if_before_a_switch, None, True, id="real-if-then-switch"),
        pytest.param(_real_if_reading_outer_tensors, None, True, id="real-if-then"),
        pytest.param(_real_if_reading_outer_tensors, None, False, id="real-if-else"),
        pytest.param(_real_if_reading_outer_tensors, ["y", "z", "x", "b"], True, id="if-output-read-later-input-asked"),
        pytest.param(_loop_and_scan_reading_outer_tensors, None, None, id="loop-scan"),
        pytest.param(_nested_switches, None, None, id="nested-switches-optional-input"),
        pytest.param(_local_function, ["y", "w", "x"], None, id="local-function-weight-asked"),
    ],
)
def test_freeing_evaluation_is_the_references(make, names: list | None, cond: bool | None) -> None:
    """Values of :class:`Float64Evaluator` (inlined switches, only needed nodes, tensors dropped after their last
    reader) equal ``onnx.reference``'s own ``run`` of the float64 graph, exactly."""
    model = make()
    names = names or [o.name for o in model.graph.output]
    feeds = {"x": np.array([1.5, -0.25], np.float32), **({} if cond is None else {"cond": np.array(cond)})}
    expected = ReferenceEvaluator(to_float64(model)).run(names, {**feeds, "x": feeds["x"].astype(np.float64)})
    ours = float64_evaluator(model)(feeds, names)
    for name, value in zip(names, expected, strict=True):
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_switches_inside_a_switched_branch_are_inlined_too() -> None:
    evaluate = float64_evaluator(_nested_switches())
    assert not [n for n in evaluate.model.graph.node if n.op_type == "If"]


def test_a_branch_reusing_a_name_stays_in_its_if() -> None:
    """Both branches hold ``c``: neither is inlined (each would take the other's constant); the rest still is."""
    model = _sibling_names()
    model.graph.node.append(
        helper.make_node("If", ["on"], ["y3"], then_branch=_negated("alone"), else_branch=_negated("unused"))
    )
    evaluate = float64_evaluator(model)
    assert [n.output[0] for n in evaluate.model.graph.node if n.op_type == "If"] == ["y1", "y2"]


class _Observed(torch.nn.Module):
    """A Linear without bias, and a float buffer its forward updates in place even in eval mode (as quantization
    observers and caches do): zeros until the first forward, equal to the graph's ``offset`` below."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4, bias=False)
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        self.seen.add_(y.detach().abs().mean(0))
        return y


def _linear_plus_offset(weight: np.ndarray) -> onnx.ModelProto:
    """``y = x · Wᵀ + offset`` with ``offset`` all zeros (the graph the module above computes)."""
    nodes = [helper.make_node("MatMul", ["x", "wt"], ["xw"]), helper.make_node("Add", ["xw", "offset"], ["y"])]
    inits = [
        numpy_helper.from_array(weight.T.astype(np.float32), "wt"),
        numpy_helper.from_array(np.zeros(4, np.float32), "offset"),
    ]
    return _graph(nodes, [_small("x", shape=[None, 3])], [_small("y", shape=[None, 4])], inits)


def test_buffers_pytorch_updates_are_not_shared() -> None:
    """The graph's evaluator keeps the graph's constants while PyTorch's forward changes its buffers."""
    torch.manual_seed(0)
    model64 = float64_copy(_Observed())
    graph = _linear_plus_offset(model64.linear.weight.detach().numpy())
    shared = shared_weights(graph, model64)
    assert np.shares_memory(shared["wt"], model64.linear.weight.detach().numpy())  # a parameter: shared
    evaluate = float64_evaluator(graph, shared=shared)
    x = np.random.default_rng(0).standard_normal((2, 3))
    before = evaluate({"x": x})["y"]
    with torch.no_grad():
        model64(torch.ones(1, 3, dtype=torch.float64))
    assert model64.seen.abs().max() > 0
    np.testing.assert_array_equal(evaluate({"x": x})["y"], before)
    np.testing.assert_array_equal(before, ReferenceEvaluator(to_float64(graph)).run(["y"], {"x": x})[0])


class Neg(OpRun):
    """A wrong ``Neg`` kernel: negates its input in place."""

    op_domain = ""

    def _run(self, x):  # type: ignore[override]
        x *= -1
        return (x,)


def test_an_op_writing_into_a_weight_fails_and_leaves_pytorchs_intact() -> None:
    """The evaluator's weights (PyTorch's own memory where shared) are read-only: a kernel writing into one is a
    one-line :class:`CouldNotVerify`, not a changed model."""
    torch.manual_seed(0)
    model64 = float64_copy(_Observed())
    weight = model64.linear.weight.detach().clone()
    graph = _linear_plus_offset(model64.linear.weight.detach().numpy())
    graph.graph.node.insert(0, helper.make_node("Neg", ["wt"], ["negated"]))
    graph.graph.node[1].input[1] = "negated"
    evaluate = float64_evaluator(graph, [Neg], shared_weights(graph, model64))
    with pytest.raises(CouldNotVerify, match="read-only"):
        evaluate({"x": np.ones((1, 3))})
    assert torch.equal(model64.linear.weight, weight)


def test_graph_info_reads_weights_on_demand_as_stored() -> None:
    """A weight over ``MAX_FOLDED`` elements is read from the graph when asked: its stored values, still known after
    the graph's initializers are pruned in place (as :func:`.assemble._prune` does); shape arithmetic constants stay
    folded."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((MAX_FOLDED + 1, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["flat"])]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([-1], np.int64), "shape")]
    model = _graph(nodes, [_small("x", shape=[3, MAX_FOLDED + 1])], [_small("flat", shape=[6])], inits)
    info = GraphInfo(model)
    np.testing.assert_array_equal(info.constant("w"), weight)
    large_protos.drop_initializers(model.graph, lambda name: name == "w")
    assert [t.name for t in model.graph.initializer] == ["shape"]
    np.testing.assert_array_equal(info.constant("w"), weight)
    assert info.shape("w") == (MAX_FOLDED + 1, 2) and info.shape("y") == (3, 2)
    np.testing.assert_array_equal(info.constant("shape"), [-1])


def test_a_negative_zero_constant_is_not_shared_with_a_zero_parameter() -> None:
    """``offset`` holds −0 where PyTorch's zero bias holds +0: equal by ``==`` but ``1/offset`` is −∞, not +∞."""
    model64 = float64_copy(torch.nn.Linear(3, 4))
    with torch.no_grad():
        model64.bias.zero_()
    nodes = [helper.make_node("Reciprocal", ["offset"], ["r"]), helper.make_node("Mul", ["x", "r"], ["y"])]
    graph = _graph(
        nodes,
        [_small("x", shape=[4])],
        [_small("y", shape=[4])],
        [numpy_helper.from_array(np.full(4, -0.0, np.float32), "offset")],
    )
    shared = shared_weights(graph, model64)
    assert "offset" not in shared
    x = np.ones(4)
    np.testing.assert_array_equal(float64_evaluator(graph, shared=shared)({"x": x})["y"], np.full(4, -np.inf))
