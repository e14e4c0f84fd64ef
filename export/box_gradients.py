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

from collections.abc import Callable, Sequence

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


def check_box_gradients(model: onnx.ModelProto, layers: Sequence[str], tolerance: float = 1e-4) -> str | None:
    """Why the box-axis backward of ``model`` (an explainer graph) is wrong, or ``None`` when it is right.

    On a seeded random batch of two images and three boxes (rows ``[0, 1, 1]``, random seeds), each
    ``box_gradient:<layer>`` row must equal the ``gradient:<layer>`` of the ordinary seeded backward run on that row's
    image, within ``tolerance`` relative (max-abs error over max-abs); both run in float32 on onnxruntime.
    """
    from .verify import session_for

    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *dims)).astype(np.float32)
    rows = np.array([0, 1, 1], np.int64)
    try:
        session = session_for(model)
        (scores,) = session.run([contract.SCORES], {contract.INPUT: x, contract.TARGET: np.full(2, -1, np.int64)})
        seeds = rng.standard_normal((3, *scores.shape[1:])).astype(np.float32)
        feeds = {contract.INPUT: x, contract.TARGET: np.full(2, -1, np.int64), contract.BOX_SWITCH: np.array(True)}
        ours = session.run(
            [contract.box_gradient_name(layer) for layer in layers],
            {**feeds, contract.BOX_SEED: seeds, contract.BOX_ROWS: rows},
        )
        ref = session.run(
            [contract.gradient_name(layer) for layer in layers],
            {contract.INPUT: x[rows], contract.TARGET: np.full(3, -1, np.int64), contract.SEED: seeds},
        )
    except Exception as exc:  # any onnxruntime failure means: no box axis for this graph
        return f"it does not run ({str(exc).splitlines()[0][:200]})"
    for layer, a, b in zip(layers, ours, ref, strict=True):
        error = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30)) if a.shape == b.shape else np.inf
        if not error <= tolerance:
            return f"its gradient at '{layer}' differs from the per-box backward by {error:.2e} relative"
    return None


def remove_box_gradients(model: onnx.ModelProto) -> None:
    """Drop the box-axis backward (its ``If``, inputs, outputs and the weights only it read) from ``model``."""
    from .assemble import _prune as prune  # the explainer graph's own pruning (nodes and weights no output needs)

    graph = model.graph
    gate_node = next(n for n in graph.node if n.op_type == "If" and n.name == contract.BOX_SWITCH)
    graph.node.remove(gate_node)
    names = {*gate_node.output, contract.BOX_SEED, contract.BOX_ROWS, contract.BOX_SWITCH}
    for field_ in (graph.output, graph.input):
        kept = [v for v in field_ if v.name not in names]
        del field_[:]
        field_.extend(kept)
    initializers = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    prune(graph)


def keep_if_exact(model: onnx.ModelProto, layers: Sequence[str], log: Callable[[str], None]) -> None:
    """:func:`check_box_gradients`; a graph that fails it loses its box axis (per-box runs then repeat the forward)."""
    if not any(n.op_type == "If" and n.name == contract.BOX_SWITCH for n in model.graph.node):
        return
    problem = check_box_gradients(model, layers)
    if problem is None:
        log("box-axis backward checked against the per-box backward: all boxes of an image from one forward pass")
        return
    remove_box_gradients(model)
    log(f"no box-axis backward: {problem}; each box will repeat the forward pass")
