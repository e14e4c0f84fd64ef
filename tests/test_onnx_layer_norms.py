"""LayerNorms over the last axis written out by exporters at opset < 17 (:mod:`onnxcam_export.onnx_layer_norms`).

Each variant is a hand-built graph first checked against ``torch.nn.functional.layer_norm`` (1e-5), so that what is
recognised is a LayerNorm; near misses (another axis, another power, no mean subtraction) are not recognised.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.autodiff.graph_info import GraphInfo
from onnxcam_export.onnx_layer_norms import layer_norms

C = 6


def _mean(x: str, out: str, opset: int, axis: int, nodes: list, inits: list) -> None:
    if opset < 18:
        nodes.append(helper.make_node("ReduceMean", [x], [out], axes=[axis]))
    else:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), out + "/axes"))
        nodes.append(helper.make_node("ReduceMean", [x, out + "/axes"], [out]))


def decomposed(
    opset: int = 13, square: str = "Pow", scale: str = "Div", affine: bool = True, axis: int = -1, power: float = 2.0
) -> onnx.ModelProto:
    """``[2, 5, C]`` → LayerNorm over ``axis`` written out as the TorchScript exporter does, with variants."""
    nodes: list = []
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(power, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "beta"),
    ]
    _mean("x", "mu", opset, axis, nodes, inits)
    nodes.append(helper.make_node("Sub", ["x", "mu"], ["d"]))
    sq = ["d", "two"] if square == "Pow" else ["d", "d"]
    nodes.append(helper.make_node(square, sq, ["d2"]))
    _mean("d2", "var", opset, axis, nodes, inits)
    nodes.append(helper.make_node("Add", ["var", "eps"], ["ve"]))
    nodes.append(helper.make_node("Sqrt", ["ve"], ["sd"]))
    if scale == "Div":
        nodes.append(helper.make_node("Div", ["d", "sd"], ["n"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["sd"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["d", "inv"], ["n"]))
    last = "n"
    if affine:
        nodes.append(helper.make_node("Mul", ["n", "gamma"], ["ng"]))
        nodes.append(helper.make_node("Add", ["ng", "beta"], ["y"]))
        last = "y"
    nodes.append(helper.make_node("Relu", [last], ["out"]))
    graph = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, C])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 5, C])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


VARIANTS = [
    {"opset": 13},
    {"opset": 18},
    {"square": "Mul"},
    {"scale": "Reciprocal"},
    {"affine": False},
    {"opset": 18, "square": "Mul", "scale": "Reciprocal", "axis": 2},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()))
def test_decomposed_layer_norm_is_recognised_with_its_output_last(variant: dict) -> None:
    model = decomposed(**variant)
    affine = variant.get("affine", True)
    x = np.random.default_rng(1).standard_normal((2, 5, C)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gamma, beta = (torch.tensor(numpy_helper.to_array(t)) for t in model.graph.initializer[2:4])
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (C,), gamma if affine else None, beta if affine else None)
    assert np.abs(sess.run(None, {"x": x})[0] - ref.relu().numpy()).max() <= 1e-5
    found = layer_norms(model, GraphInfo(model))
    output = "y" if affine else "n"
    assert list(found) == [output] and found[output].input == "x"
    assert found[output].last == next(i for i, n in enumerate(model.graph.node) if n.output[0] == output)


@pytest.mark.parametrize("variant", [{"axis": 1}, {"power": 3.0}], ids=["over-tokens", "cube"])
def test_near_misses_are_not_layer_norms(variant: dict) -> None:
    model = decomposed(**variant)
    assert layer_norms(model, GraphInfo(model)) == {}


def test_the_op_over_the_last_axis_is_a_layer_norm_and_over_another_is_not() -> None:
    def op(axis: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=axis)],
            "op",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, C])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, C])],
            [numpy_helper.from_array(np.ones(C, np.float32), "g")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    assert list(layer_norms(op(-1), GraphInfo(op(-1)))) == ["y"]
    assert list(layer_norms(op(2), GraphInfo(op(2)))) == ["y"]
    assert layer_norms(op(1), GraphInfo(op(1))) == {}
