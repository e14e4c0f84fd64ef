"""Hessian-vector products ``H·A = ∂⟨∂y/∂A, v⟩/∂A`` at ``v = A`` per layer, for ShapleyCAM (Cai 2025), as optional
outputs of the explainer graph (``--hvp``): the reverse-mode engine applied twice.

The first pass builds ``G = ∂y/∂A`` as ONNX nodes (its own copy, so this part sits in its own ``If``); the second
differentiates ``⟨G, v⟩`` with respect to ``A``, through the forward *and* the first pass's nodes, with the layer's
activation as the (constant) cotangent ``v`` — pytorch-grad-cam's ``torch.autograd.grad(grads, activations,
grad_outputs=activations)``. Every op of the first pass needs a rule too; one without raises the engine's one-line
:class:`GradientError` naming it. Where ``G`` does not depend on ``A`` differentiably (a ReLU network with a linear
head: only the ReLU masks, which are piecewise constant), ``H·A = 0``, as torch's ``allow_unused``. Outputs
``hvp:<layer>`` ``[N, C, h, w]`` behind ``compute:hvp`` (default off); metadata ``onnxcam.hvp`` lists the layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import helper

from onnxcam import contract

from .autodiff.context import GradientError
from .autodiff.engine import active_nodes, differentiate
from .autodiff.graph_info import GraphInfo
from .gating import Part


def add_hvp(model: onnx.ModelProto, layers: Sequence[str], roots: Mapping[str, str], seed: str) -> Part:
    """Add ``hvp:<layer>`` for ``layers`` (NCHW, whose tensor is ``roots[layer]``) to ``model`` (in place); return the
    gated :class:`Part`. Raises :class:`GradientError` when an op of the first pass has no rule."""
    graph = model.graph
    sources = list(dict.fromkeys(roots[layer] for layer in layers))
    first = differentiate(model, sources, contract.SCORES, seed, prefix="hvp_grad")
    graph.node.extend(first.nodes)
    graph.initializer.extend(first.initializers)
    nodes, outputs = list(first.nodes), []
    info = GraphInfo(model)
    for i, layer in enumerate(layers):
        root = roots[layer]
        _, on_path = active_nodes(graph, [root], first.grads[root], lambda name: info.dtype(name).kind == "f")
        if root in on_path:
            try:
                second = differentiate(model, [root], first.grads[root], root, prefix=f"hvp_{i}")
            except GradientError as exc:
                raise GradientError(f"--hvp, layer '{layer}': the backward is not differentiable; {exc}") from None
            graph.node.extend(second.nodes)
            graph.initializer.extend(second.initializers)
            added, result = second.nodes, second.grads[root]
        else:  # G is piecewise constant in A (ReLU masks only, a linear head): H·A = 0, as torch's unused input
            result = f"hvp_{i}/zero"
            added = [
                helper.make_node("Shape", [root], [f"{result}/shape"], name=f"{result}/shape"),
                helper.make_node("ConstantOfShape", [f"{result}/shape"], [result], name=result),
            ]
            graph.node.extend(added)
        nodes += added
        dims = info.shape(root) or (None,) * 4
        value = helper.make_tensor_value_info(contract.hvp_name(layer), onnx.TensorProto.FLOAT, ["N", *dims[1:]])
        outputs.append((result, value))
    return Part(contract.HVP_SWITCH, False, nodes, outputs)
