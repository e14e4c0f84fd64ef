"""A backward pass with a box axis: many seeds per image, differentiated from one forward pass (detectors).

The VJP of ``y_m = Σ box_seed_m ⊙ scores_{r_m}`` (``r = box_rows``: the image of box ``m``) needs the forward tensors
of image ``r_m`` only. So the reverse pass is built once by the engine (:func:`.autodiff.engine.differentiate`, seed
``box_seed`` ``[M, *S]``), and every forward tensor it reads that depends on the input (batch ``N``) is replaced by
``Gather(t, box_rows, axis=0)`` (batch ``M``): every rule then sees a consistent batch of ``M`` rows, and the forward
runs once per image whatever the number of boxes. Weights, constants and integer tensors (shapes, indices) are read
as they are. The pass sits in an
``If`` switched by ``compute:box_gradients`` (:mod:`.gating`), so other runs do not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from onnxcam import contract

from .autodiff.engine import differentiate, downstream
from .autodiff.graph_info import GraphInfo
from .gating import Part, optional_input


def add_box_gradients(model: onnx.ModelProto, layers: Sequence[str], score_shape: tuple[int, ...]) -> Part:
    """Append the ``box_seed``/``box_rows`` inputs and the box-axis backward to ``model``'s graph; return its
    :class:`~.gating.Part` (outputs ``box_gradient:<layer>``) for :func:`~.gating.gate`."""
    graph = model.graph
    info = GraphInfo(model)
    batched = downstream(graph, [contract.INPUT], lambda name: info.dtype(name).kind == "f")
    for name, rank, default in (
        (contract.BOX_SEED, len(score_shape) + 1, np.zeros((1, *score_shape), np.float32)),
        (contract.BOX_ROWS, 1, np.zeros(1, np.int64)),
    ):
        value, initializer = optional_input(name, rank, default)
        graph.input.append(value)
        graph.initializer.append(initializer)
    taps = [contract.activation_name(layer) for layer in layers]
    backward = differentiate(model, taps, contract.SCORES, contract.BOX_SEED, prefix="box")
    own = {o for node in backward.nodes for o in node.output}
    gathered: dict[str, str] = {}
    gathers: list[onnx.NodeProto] = []
    for node in backward.nodes:
        for i, name in enumerate(node.input):
            if name in batched and name not in own:
                if name not in gathered:
                    gathered[name] = f"onnxcam/box_rows/{name}"
                    gathers.append(
                        helper.make_node(
                            "Gather", [name, contract.BOX_ROWS], [gathered[name]], name=gathered[name], axis=0
                        )
                    )
                node.input[i] = gathered[name]
    nodes = [*gathers, *backward.nodes]
    graph.node.extend(nodes)
    graph.initializer.extend(backward.initializers)
    outputs = []
    for layer, tap in zip(layers, taps, strict=True):
        info = next(o for o in graph.output if o.name == tap)
        value = onnx.ValueInfoProto()
        value.CopyFrom(info)
        value.name = contract.box_gradient_name(layer)
        value.type.tensor_type.shape.dim[0].dim_param = "M"
        outputs.append((backward.grads[tap], value))
    return Part(contract.BOX_SWITCH, False, nodes, outputs)
