"""FullGrad's gradients (Srinivas & Fleuret, NeurIPS 2019): ``b ⊙ ∂y/∂z`` for every 2-D convolution and batch
normalisation with a bias, and ``x ⊙ ∂y/∂x``, as optional outputs of the explainer graph (``--bias-gradients``).

``z`` is the node's output (its bias is added there, so ``∂y/∂b_k = Σ_ij ∂y/∂z_kij``); ``b`` the bias per channel:
a ``Conv``'s third input, a ``BatchNormalization``'s ``B − mean·scale/√(var + ε)`` (pytorch-grad-cam's
``FullGrad.get_bias_data``). A batch normalisation folded into the convolution before it at export keeps its bias in
the convolution's, at the same tensor: the same term. One reverse pass over the whole network gives them all, behind
the ``compute:bias_gradients`` switch (off by default). Outputs: ``bias_gradient:input`` ``[N, C, H, W]`` and
``bias_gradient:<i>`` ``[N, K_i, h_i, w_i]``; metadata ``onnxcam.bias_gradients`` lists the nodes, in order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam import contract

from .autodiff.engine import active_nodes, differentiate
from .autodiff.graph_info import GraphInfo
from .errors import ExportError
from .gating import Part


def node_bias(node: onnx.NodeProto, info: GraphInfo) -> np.ndarray | None:
    """The per-channel bias ``[K]`` a ``Conv`` (2-D, constant bias) or ``BatchNormalization`` (constant
    parameters, 4-D) adds at its output, or ``None`` for any other node."""
    if info.shape(node.output[0]) is None or len(info.shape(node.output[0]) or ()) != 4:
        return None
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
        return info.constant(node.input[2])
    if node.op_type == "BatchNormalization":
        scale, bias, mean, var = (info.constant(name) for name in node.input[1:5])
        if any(v is None for v in (scale, bias, mean, var)):
            return None
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        return bias - mean * scale / np.sqrt(var + np.float32(eps))
    return None


def add_bias_gradients(model: onnx.ModelProto, seed: str) -> tuple[Part, list[str]]:
    """Add FullGrad's terms to ``model`` (in place; the seed tensor ``seed`` drives the reverse pass); return the
    gated :class:`Part` and the biased nodes' names. Raises :class:`ExportError` when the network has no such node
    on the path input → scores."""
    graph = model.graph
    info = GraphInfo(model)
    _, on_path = active_nodes(graph, [contract.INPUT], contract.SCORES, lambda name: info.dtype(name).kind == "f")
    biased = []
    for node in graph.node:
        if node.output[0] in on_path and node.domain in ("", "ai.onnx"):
            bias = node_bias(node, info)
            if bias is not None:
                biased.append((node, bias))
    if not biased:
        raise ExportError("--bias-gradients: the network has no 2-D convolution or batch norm with a bias (FullGrad)")
    sources = [contract.INPUT, *(node.output[0] for node, _ in biased)]
    backward = differentiate(model, sources, contract.SCORES, seed, prefix="bias")
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)
    products = [helper.make_node("Mul", [contract.INPUT, backward.grads[contract.INPUT]], ["fullgrad/input_term"])]
    outputs = [("fullgrad/input_term", _value_info(info, contract.INPUT, contract.bias_gradient_name("input")))]
    for i, (node, bias) in enumerate(biased):
        values = f"fullgrad/bias_{i}"
        graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32).reshape(1, -1, 1, 1), values))
        products.append(helper.make_node("Mul", [values, backward.grads[node.output[0]]], [f"fullgrad/term_{i}"]))
        outputs.append((f"fullgrad/term_{i}", _value_info(info, node.output[0], contract.bias_gradient_name(str(i)))))
    for product in products:
        product.name = product.output[0]
    graph.node.extend(products)
    names = [node.name or node.output[0] for node, _ in biased]
    return Part(contract.BIAS_SWITCH, False, [*backward.nodes, *products], outputs), names


def _value_info(info: GraphInfo, tensor: str, name: str) -> onnx.ValueInfoProto:
    """Float value info ``[N, *dims of tensor]`` named ``name``."""
    dims = info.shape(tensor) or (None,) * 4
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", *dims[1:]])
