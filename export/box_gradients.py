"""A backward pass with a box axis: many seeds per image, differentiated from one forward pass (detectors).

The VJP of ``y_m = Σ box_seed_m ⊙ scores_{r_m}`` (``r = box_rows``: the image of box ``m``) needs the forward tensors
of image ``r_m`` only, and only those the reverse pass from ``scores`` back to the tapped layers reads (the part
after the layers: for a neck tap, the head). So the reverse pass is built once by the engine
(:func:`.autodiff.engine.differentiate`, seed ``box_seed`` ``[M, *S]``), and every forward tensor ``t`` it reads that
depends on the input (batch ``N``) is replaced by ``Gather(box_state_in:<t>, box_rows, axis=0)`` (batch ``M``):
every rule then sees a consistent batch of ``M`` rows. The forward run that finds the boxes also returns those
tensors (outputs ``box_state:<t>``, an ``If`` on ``compute:box_state``); the box run feeds them back with an empty
``input`` ``[0, C, H, W]``, so the network before the layers does not run again: the boxes cost the head's reverse
pass only. Weights, constants and integer tensors (shapes, indices) are read as they are. The pass sits in an
``If`` switched by ``compute:box_gradients`` (:mod:`.gating`), so other runs do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam import contract

from . import large_protos
from .autodiff.engine import differentiate, downstream
from .autodiff.graph_info import GraphInfo
from .autodiff.rules.quantize import straight_through
from .gating import Part, optional_input


def freeze_reshapes(model: onnx.ModelProto) -> int:
    """Give every ``Reshape`` of the forward that keeps the batch axis a constant target ``[0, d1, …]`` (``0``: copy
    the batch); return how many were rewritten.

    The box run feeds an empty ``input`` ``[0, C, H, W]``, and onnxruntime refuses to infer a ``-1`` dim of an empty
    tensor (``flatten(2)`` of a head). Only for a fixed-size input: two onnxruntime runs (batch 1 and 2) give each
    target's value, and a node is rewritten when its input's and output's first dims are the batch in both and the
    other dims agree, so the constant target is the one the graph computed for every batch. Nothing for a graph at a
    fixed batch (:mod:`.source_batch`): it has no box run (each box repeats the forward).
    """
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims[1:]) or (dims and dims[0].HasField("dim_value")):
        return 0
    after = downstream(graph, [contract.INPUT])
    nodes = [n for n in graph.node if n.op_type == "Reshape" and n.input[0] in after]
    if not nodes:
        return 0
    names = list(dict.fromkeys(name for n in nodes for name in (n.input[0], n.output[0])))
    session = large_protos.session(model, outputs=[helper.make_empty_tensor_value_info(name) for name in names])
    shapes = []
    for batch in (1, 2):
        x = np.zeros((batch, *(d.dim_value for d in dims[1:])), np.float32)
        shapes.append(dict(zip(names, (v.shape for v in session.run(names, {contract.INPUT: x})), strict=True)))
    count = 0
    for node in nodes:
        one, two = ((s[node.input[0]], s[node.output[0]]) for s in shapes)
        keeps_batch = all(a[0] == 1 and b[0] == 2 and a[1:] == b[1:] for a, b in zip(one, two, strict=True))
        if keeps_batch and len(one[1]) and not any(a.name == "allowzero" and a.i for a in node.attribute):
            target = f"onnxcam/frozen_shape/{node.output[0]}"
            graph.initializer.append(numpy_helper.from_array(np.array([0, *one[1][1:]], np.int64), target))
            node.input[1] = target
            count += 1
    return count


def add_box_gradients(model: onnx.ModelProto, layers: Sequence[str], score_shape: tuple[int, ...]) -> list[Part]:
    """Append the ``box_seed``/``box_rows`` inputs, the box-axis backward and its state to ``model``'s graph; return
    its :class:`~.gating.Part` s for :func:`~.gating.gate`: the state (outputs ``box_state:<t>``) and the backward
    (outputs ``box_gradient:<layer>``, reading inputs ``box_state_in:<t>``)."""
    graph = model.graph
    info = GraphInfo(model)
    quantized = straight_through(graph)  # int8 QDQ: the integer tensors between Q and DQ carry the image's values
    batched = downstream(graph, [contract.INPUT], lambda name: info.dtype(name).kind == "f" or name in quantized)
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
                            "Gather",
                            [contract.box_state_input_name(name), contract.BOX_ROWS],
                            [gathered[name]],
                            name=gathered[name],
                            axis=0,
                        )
                    )
                node.input[i] = gathered[name]
    state_nodes, state_outputs = [], []
    for name in gathered:
        rank, dtype = len(info.shape(name) or ()), info.dtype(name)
        value, initializer = optional_input(contract.box_state_input_name(name), rank, np.zeros((1,) * rank, dtype))
        graph.input.append(value)
        graph.initializer.append(initializer)
        out = contract.box_state_name(name)
        state_nodes.append(helper.make_node("Identity", [name], [out], name=out))
        state_outputs.append(
            (out, helper.make_tensor_value_info(out, value.type.tensor_type.elem_type, info.shape(name)))
        )
    graph.node.extend(state_nodes)
    nodes = [*gathers, *backward.nodes]
    graph.node.extend(nodes)
    graph.initializer.extend(backward.initializers)
    outputs = []
    for layer, tap in zip(layers, taps, strict=True):
        info_ = next(o for o in graph.output if o.name == tap)
        value = onnx.ValueInfoProto()
        value.CopyFrom(info_)
        value.name = contract.box_gradient_name(layer)
        value.type.tensor_type.shape.dim[0].dim_param = "M"
        outputs.append((backward.grads[tap], value))
    return [
        Part(contract.BOX_STATE_SWITCH, False, state_nodes, state_outputs),
        Part(contract.BOX_SWITCH, False, nodes, outputs),
    ]


def box_state(model: onnx.ModelProto) -> list[str]:
    """The forward tensors whose ``box_state:<t>`` outputs ``model`` has (empty for a graph without them)."""
    prefix = contract.BOX_STATE_PREFIX
    return [o.name.removeprefix(prefix) for o in model.graph.output if o.name.startswith(prefix)]


def check_box_gradients(model: onnx.ModelProto, layers: Sequence[str], tolerance: float = 1e-4) -> str | None:
    """Why the box-axis backward of ``model`` (an explainer graph) is wrong, or ``None`` when it is right.

    On a seeded random batch of two images: one run gives ``scores`` and the ``box_state:<t>`` outputs; a second run
    on an empty ``input`` feeds them back (without state: on the same images) with three boxes (rows ``[0, 1, 1]``,
    random seeds). Each ``box_gradient:<layer>`` row must equal the ``gradient:<layer>`` of the ordinary seeded
    backward run on that row's image, within ``tolerance`` relative (max-abs error over max-abs); all runs in float32
    on onnxruntime.
    """
    from .verify import session_for

    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *dims)).astype(np.float32)
    rows = np.array([0, 1, 1], np.int64)
    state = box_state(model)
    try:
        session = session_for(model)
        scores, *values = session.run(
            [contract.SCORES, *map(contract.box_state_name, state)],
            {contract.INPUT: x, contract.TARGET: np.full(2, -1, np.int64)}
            | ({contract.BOX_STATE_SWITCH: np.array(True)} if state else {}),
        )
        seeds = rng.standard_normal((3, *scores.shape[1:])).astype(np.float32)
        images = x[:0] if state else x  # with the state, the box run does not run the network again
        feeds = {
            contract.INPUT: images,
            contract.TARGET: np.full(len(images), -1, np.int64),
            contract.GRADIENTS_SWITCH: np.array(False),
            contract.BOX_SWITCH: np.array(True),
            contract.BOX_SEED: seeds,
            contract.BOX_ROWS: rows,
            **{contract.box_state_input_name(t): v for t, v in zip(state, values, strict=True)},
        }
        ours = session.run([contract.box_gradient_name(layer) for layer in layers], feeds)
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


def _remove(model: onnx.ModelProto, switches: Sequence[str], inputs: set[str]) -> None:
    """Drop the ``If`` s named ``switches``, their outputs, switch inputs, ``inputs`` and whatever no output needs."""
    from .assemble import _prune as prune  # the explainer graph's own pruning (nodes and weights no output needs)

    graph = model.graph
    names = {*inputs, *switches}
    for gate_node in [n for n in graph.node if n.op_type == "If" and n.name in switches]:
        graph.node.remove(gate_node)
        names |= set(gate_node.output)
    for field_ in (graph.output, graph.input):
        kept = [v for v in field_ if v.name not in names]
        del field_[:]
        field_.extend(kept)
    large_protos.drop_initializers(graph, names.__contains__)
    prune(graph)


def drop_state(model: onnx.ModelProto) -> None:
    """Make the box-axis backward read the forward tensors of its own run instead of ``box_state_in:<t>`` (the box
    run then repeats the forward), and drop the state."""
    state = box_state(model)
    gate_node = next(n for n in model.graph.node if n.op_type == "If" and n.name == contract.BOX_SWITCH)
    branch = next(a.g for a in gate_node.attribute if a.name == "then_branch")
    fed = {contract.box_state_input_name(t): t for t in state}
    for node in branch.node:
        node.input[:] = [fed.get(i, i) for i in node.input]
    _remove(model, [contract.BOX_STATE_SWITCH], set(fed))


def remove_box_gradients(model: onnx.ModelProto) -> None:
    """Drop the box-axis backward and its state (their ``If`` s, inputs, outputs and the weights only they read)."""
    state = {contract.box_state_input_name(t) for t in box_state(model)}
    _remove(model, [contract.BOX_SWITCH, contract.BOX_STATE_SWITCH], {contract.BOX_SEED, contract.BOX_ROWS, *state})


def keep_if_exact(model: onnx.ModelProto, layers: Sequence[str], log: Callable[[str], None]) -> None:
    """:func:`check_box_gradients`; a graph that fails it with its state loses the state (the box run repeats the
    forward), one that fails it without loses its box axis (per-box runs then repeat the forward)."""
    if not any(n.op_type == "If" and n.name == contract.BOX_SWITCH for n in model.graph.node):
        return
    problem = check_box_gradients(model, layers)
    if problem is None:
        how = "from the forward that finds them" if box_state(model) else "from one more forward pass"
        log(f"box-axis backward checked against the per-box backward: all boxes of an image {how}")
        return
    if box_state(model):
        drop_state(model)
        log(f"box-axis backward on the saved forward state: {problem}; the box run will repeat the forward")
        keep_if_exact(model, layers, log)
        return
    remove_box_gradients(model)
    log(f"no box-axis backward: {problem}; each box will repeat the forward pass")
