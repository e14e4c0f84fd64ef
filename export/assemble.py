"""Turn a forward graph with tapped layers into an explainer graph that follows :mod:`onnxcam.contract`.

Input: an ONNX model whose input is ``input``, whose outputs are ``scores`` and one ``activation:<layer>`` per layer.
Added: the ``target`` and ``seed`` inputs, ``target_used`` (top-1 where ``target < 0``), the seed of the backward
pass (``seed`` where given, else ``ḡ_scores[n, k] = [k = target_used[n]]``), the reverse-mode graph giving
``gradient:<layer>`` per layer, optionally ``gradient:input[:rule]`` (one reverse pass per ReLU backward rule), and a
copy of the part after each layer fed by ``head:<layer>`` (see :mod:`onnxcam.contract`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract

from . import large_protos
from .autodiff.context import GradientError
from .autodiff.engine import Backward, differentiate, downstream
from .autodiff.graph_info import GraphInfo
from .autodiff.relu_backward import overrides
from .bias_gradients import add_bias_gradients
from .box_gradients import add_box_gradients
from .errors import ExportError
from .gating import Part, gate, optional_input, reads
from .hvp import add_hvp
from .layouts import from_nchw_nodes, nchw_shape, to_nchw_nodes
from .score_activation import reapply
from .scores_head import resolve_head


class OutputError(ExportError):
    """The model's output cannot be read as ``[N, classes]``."""


def score_shape(info: GraphInfo, name: str) -> tuple[int, ...]:
    """``(K,)`` when ``name`` is ``[N, K]`` or ``[N, K, 1, …, 1]``; ``(K, H, W)`` for a dense ``[N, K, H, W]`` output.

    Anything else (unknown or dynamic dims, other ranks) raises :class:`OutputError`.
    """
    shape = info.shape(name)
    dims = tuple(shape[1:]) if shape else ()
    if len(dims) >= 1 and all(isinstance(d, int) for d in dims):
        if all(d == 1 for d in dims[1:]):
            return (int(dims[0]),)
        if len(dims) == 3:
            return tuple(int(d) for d in dims)
    raise OutputError(
        f"the model's output '{name}' has shape {list(shape) if shape else 'unknown'}; onnxcam needs "
        "[N, classes] (trailing dims of size 1 are fine) or a dense [N, classes, H, W] with fixed sizes"
    )


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(reads(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    large_protos.drop_initializers(graph, lambda name: name not in needed)


def build_explainer(
    forward: onnx.ModelProto,
    layers: Sequence[str],
    metadata: contract.Metadata,
    input_gradients: Sequence[str] = (),
    heads: bool = True,
    log: Callable[[str], None] = lambda _: None,
    unit_layer: str | None = None,
    bias_gradients: bool = False,
    hvp: bool = False,
    consume: bool = False,
) -> onnx.ModelProto:
    """Add ``target``, ``seed``, ``target_used``, ``gradient:<layer>`` and, on request, the input gradients
    (one per ReLU backward rule), head graphs, FullGrad's bias gradients and ShapleyCAM's Hessian-vector products
    to ``forward``; stamp the contract metadata.

    ``unit_layer``: a layer whose tap ``activation:<unit_layer>`` is an output of ``forward``; adds ``unit_seed``
    and differentiates the unit's value where it is given (:func:`_unit_objective`)."""
    model = forward if consume else onnx.ModelProto()
    if not consume:
        model.CopyFrom(forward)
    graph = model.graph
    taps = [contract.activation_name(layer) for layer in layers]
    outputs = {o.name for o in graph.output}
    for name in [contract.SCORES, *taps]:
        if name not in outputs:
            raise GradientError(f"forward graph has no output '{name}'")
    raw = {layer: _as_nchw(graph, layer, metadata.layout(layer)) for layer in layers}
    shape = _scores_as_contract(model, metadata.scores_kind)
    seed = _seed_and_target(graph, shape)
    _set_outputs(graph, shape)
    explained = contract.SCORES
    if unit_layer is not None:
        if metadata.detection is not None:
            raise GradientError("a unit layer is for classifiers and dense outputs, not detectors")
        tap = contract.activation_name(unit_layer)
        unit = contract.Unit(unit_layer, _unit_shape(model, tap))
        metadata = replace(metadata, unit=unit)
        explained, seed = _unit_objective(graph, shape, seed, unit, GraphInfo(model).dtype(tap))

    roots = {layer: _identity_root(graph, raw[layer]) for layer in layers}  # `layer4` and `layer4.1`: one tensor
    backward = differentiate(model, list(dict.fromkeys(roots.values())), explained, seed)
    _append(graph, backward)
    gradients, to_nchw = [], []
    for layer, tap in zip(layers, taps, strict=True):
        grad = backward.grads[roots[layer]]
        if raw[layer] != tap:  # the gradient in the layer's own layout → NCHW, like the activation
            to_nchw += to_nchw_nodes(graph, metadata.layout(layer), grad, f"{grad}/nchw/{layer}", _channels(graph, tap))
            grad = f"{grad}/nchw/{layer}"
        elif any(grad == g for g, _ in gradients):  # a second name of one tensor: a subgraph output of its own
            to_nchw.append(helper.make_node("Identity", [grad], [f"{grad}/{layer}"], name=f"{grad}/{layer}"))
            grad = f"{grad}/{layer}"
        gradients.append((grad, _like(graph, tap, contract.gradient_name(layer))))
    graph.node.extend(to_nchw)
    parts = [Part(contract.GRADIENTS_SWITCH, True, [*backward.nodes, *to_nchw], gradients)]
    for rule in input_gradients:
        name = contract.input_gradient_name(rule)
        pass_ = differentiate(model, [contract.INPUT], explained, seed, overrides(rule), prefix=rule)
        _append(graph, pass_)
        parts.append(
            Part(
                contract.switch_name(name),
                False,
                pass_.nodes,
                [(pass_.grads[contract.INPUT], _like(graph, contract.INPUT, name))],
            )
        )
    with_head = []
    for layer in layers if heads else []:
        head = add_head(graph, layer, log, metadata.layout(layer), roots[layer])
        if head is not None:
            name = contract.head_scores_name(layer)
            parts.append(
                Part(
                    contract.switch_name(name),
                    False,
                    head[0],
                    [(head[1], _batch_of(_like(graph, contract.SCORES, name), "M"))],
                )
            )
            with_head.append(layer)
    if metadata.detection is not None and metadata.fixed_batch is None:  # per-box seeds (:mod:`.box_gradients`);
        parts.extend(add_box_gradients(model, layers, shape))  # at a fixed batch each box repeats the forward
    if metadata.detection is not None and (hvp or bias_gradients):
        raise ExportError("--hvp and --bias-gradients are for classifiers and dense outputs, not detectors")
    hvp_layers = [layer for layer in layers if raw[layer] == contract.activation_name(layer)] if hvp else []
    if hvp and len(hvp_layers) < len(layers):
        raise ExportError("--hvp: only layers laid out NCHW (not token or channels-last layers)")
    if hvp_layers:  # ShapleyCAM's H·A (:mod:`.hvp`)
        parts.append(add_hvp(model, hvp_layers, roots, seed))
    biased: list[str] = []
    if bias_gradients:  # FullGrad's terms (:mod:`.bias_gradients`)
        part, biased = add_bias_gradients(model, seed)
        parts.append(part)
    for part in parts:
        gate(graph, part)
    _prune(graph)
    props = metadata.to_props()
    props[contract.META_INPUT_GRADIENTS] = json.dumps(list(input_gradients))
    props[contract.META_HEADS] = json.dumps(with_head)
    if biased:
        props[contract.META_BIAS_GRADIENTS] = json.dumps(biased)
    if hvp_layers:
        props[contract.META_HVP] = json.dumps(hvp_layers)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    large_protos.check_model(model, full_check=True)
    return model


def _scores_as_contract(model: onnx.ModelProto, kind: str) -> tuple[int, ...]:
    """Make ``scores`` what ``kind`` explains (:mod:`.scores_head`: e.g. the logits before a trailing Softmax or
    Sigmoid, moved as the output is; ``[N, K, 1, 1]`` flattened); return their ``S``."""
    graph = model.graph
    head = resolve_head(model, kind)
    logits = reapply(graph, head.tail, head.tensor)
    shape = score_shape(GraphInfo(model), logits)
    rank = len(shape) + 1
    if logits != contract.SCORES or len(GraphInfo(model).shape(logits) or ()) != rank:
        raw = contract.SCORES + "/raw"
        for node in graph.node:
            node.output[:] = [raw if o == contract.SCORES else o for o in node.output]
            node.input[:] = [raw if i == contract.SCORES else i for i in node.input]
        source = raw if logits == contract.SCORES else logits
        op = "Flatten" if len(shape) == 1 else "Identity"
        attrs = {"axis": 1} if op == "Flatten" else {}
        graph.node.append(helper.make_node(op, [source], [contract.SCORES], name="onnxcam/scores", **attrs))
    return shape


def _seed_and_target(graph: onnx.GraphProto, shape: tuple[int, ...]) -> str:
    """Nodes for ``target_used`` and the seed of the backward pass; returns the seed's name.

    ``class = target < 0 ? argmax_k Σ_positions scores : target``; ``use_seed = Σ|seed| > 0`` per seed row;
    ``seed_used = use_seed ? seed : one_hot(class)``; ``target_used = use_seed ? −1 : class``. The ``seed`` input
    defaults to one all-zero row, so a caller that feeds only ``target`` gets the one-hot seed.
    """
    dense = len(shape) > 1
    graph.input.append(helper.make_tensor_value_info(contract.TARGET, TensorProto.INT64, ["N"]))
    seed_input, seed_default = optional_input(contract.SEED, len(shape) + 1, np.zeros((1, *shape), np.float32))
    graph.input.append(seed_input)
    graph.initializer.append(seed_default)
    consts = {
        "onnxcam/zero": np.array(0, np.int64),
        "onnxcam/zero_f": np.array(0.0, np.float32),
        "onnxcam/top1_value": np.array(contract.TOP1, np.int64),
        "onnxcam/depth": np.array(shape[0], np.int64),
        "onnxcam/onehot_values": np.array([0.0, 1.0], np.float32),
        "onnxcam/seed_axes": np.arange(1, len(shape) + 1, dtype=np.int64),
        "onnxcam/spatial_axes": np.array([2, 3], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    per_class = "onnxcam/class_scores"
    nodes = [
        helper.make_node("ReduceSum", [contract.SCORES, "onnxcam/spatial_axes"], [per_class], keepdims=0)
        if dense
        else helper.make_node("Identity", [contract.SCORES], [per_class]),
        helper.make_node("ArgMax", [per_class], ["onnxcam/top1"], axis=1, keepdims=0),
        helper.make_node("Less", [contract.TARGET, "onnxcam/zero"], ["onnxcam/use_top1"]),
        helper.make_node("Where", ["onnxcam/use_top1", "onnxcam/top1", contract.TARGET], ["onnxcam/class"]),
        helper.make_node("OneHot", ["onnxcam/class", "onnxcam/depth", "onnxcam/onehot_values"], ["onnxcam/onehot"]),
        helper.make_node("Abs", [contract.SEED], ["onnxcam/seed_abs"]),
        helper.make_node("ReduceSum", ["onnxcam/seed_abs", "onnxcam/seed_axes"], ["onnxcam/seed_mass"], keepdims=1),
        helper.make_node("Greater", ["onnxcam/seed_mass", "onnxcam/zero_f"], ["onnxcam/use_seed"]),
        helper.make_node("Squeeze", ["onnxcam/use_seed", "onnxcam/seed_axes"], ["onnxcam/use_seed_row"]),
        helper.make_node(
            "Where", ["onnxcam/use_seed_row", "onnxcam/top1_value", "onnxcam/class"], [contract.TARGET_USED]
        ),
    ]
    onehot = "onnxcam/onehot"
    if dense:
        nodes.append(helper.make_node("Unsqueeze", [onehot, "onnxcam/spatial_axes"], ["onnxcam/onehot_dense"]))
        onehot = "onnxcam/onehot_dense"
    seed = "onnxcam/seed_used"
    nodes.append(helper.make_node("Where", ["onnxcam/use_seed", contract.SEED, onehot], [seed]))
    for node in nodes:
        node.name = node.output[0]
    graph.node.extend(nodes)
    return seed


def _unit_shape(model: onnx.ModelProto, tap: str) -> tuple[int, ...]:
    """Per-image shape ``(C, h, w)`` or ``(K,)`` of the unit tensor ``tap`` (fixed sizes; else GradientError)."""
    dims = GraphInfo(model).shape(tap) or []
    per_image = tuple(dims[1:])
    if len(per_image) not in (1, 3) or not all(isinstance(d, int) for d in per_image):
        raise GradientError(
            f"unit layer '{tap.removeprefix(contract.ACTIVATION_PREFIX)}' has shape {list(dims)}; unit targets need "
            "[N, C, h, w] or [N, K] with static sizes: choose another --unit-layer"
        )
    return tuple(int(d) for d in per_image)


#: The explained quantity ``y`` [N] of a graph with a unit layer (what the backward differentiates).
UNIT_OBJECTIVE = "onnxcam/unit/y"


def _unit_objective(
    graph: onnx.GraphProto, shape: tuple[int, ...], class_seed: str, unit: contract.Unit, dtype: np.dtype
) -> tuple[str, str]:
    """Nodes for the explained quantity with a ``unit_seed`` input; returns ``(y, its seed)`` for the backward.

    ``use_unit_n = Σ|unit_seed_n| > 0``; ``y_n = Σ (use_unit_n ? 0 : seed_used_n) ⊙ scores_n + Σ unit_seed_n ⊙ U_n``
    (``U = activation:<unit layer>``, cast to float32 when ``dtype`` is another, e.g. a float16 graph's), differentiated
    with seed 1 per image; ``target_used_n = −1`` where ``use_unit_n``. Seed rows of zeros leave the class target as
    before.
    """
    tap = contract.activation_name(unit.layer)
    zeros = np.zeros((1, *unit.shape), np.float32)
    seed_input, default = optional_input(contract.UNIT_SEED, len(unit.shape) + 1, zeros)
    graph.input.append(seed_input)
    graph.initializer.append(default)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.arange(1, len(unit.shape) + 1, dtype=np.int64), "onnxcam/unit/axes"),
            numpy_helper.from_array(np.arange(1, len(shape) + 1, dtype=np.int64), "onnxcam/unit/score_axes"),
        ]
    )
    class_used = "onnxcam/unit/class_target_used"
    for node in graph.node:
        node.output[:] = [class_used if o == contract.TARGET_USED else o for o in node.output]
    u = "onnxcam/unit/"
    nodes = []
    if dtype != np.float32:
        nodes.append(helper.make_node("Cast", [tap], [u + "tap_float"], to=TensorProto.FLOAT))
        tap = u + "tap_float"
    nodes += [
        helper.make_node("Abs", [contract.UNIT_SEED], [u + "abs"]),
        helper.make_node("ReduceSum", [u + "abs", u + "axes"], [u + "mass"], keepdims=0),
        helper.make_node("Greater", [u + "mass", "onnxcam/zero_f"], [u + "use"]),
        helper.make_node("Where", [u + "use", "onnxcam/top1_value", class_used], [contract.TARGET_USED]),
        helper.make_node("Unsqueeze", [u + "use", u + "score_axes"], [u + "use_scores"]),
        helper.make_node("Where", [u + "use_scores", "onnxcam/zero_f", class_seed], [u + "class_seed"]),
        helper.make_node("Mul", [u + "class_seed", contract.SCORES], [u + "class_terms"]),
        helper.make_node("ReduceSum", [u + "class_terms", u + "score_axes"], [u + "class_y"], keepdims=0),
        helper.make_node("Mul", [contract.UNIT_SEED, tap], [u + "unit_terms"]),
        helper.make_node("ReduceSum", [u + "unit_terms", u + "axes"], [u + "unit_y"], keepdims=0),
        helper.make_node("Add", [u + "class_y", u + "unit_y"], [UNIT_OBJECTIVE]),
        helper.make_node("Shape", [UNIT_OBJECTIVE], [u + "y_shape"]),
        helper.make_node(
            "ConstantOfShape",
            [u + "y_shape"],
            [u + "ones"],
            value=numpy_helper.from_array(np.ones(1, np.float32)),
        ),
    ]
    for node in nodes:
        node.name = u + node.output[0].removeprefix(u)
    graph.node.extend(nodes)
    return UNIT_OBJECTIVE, u + "ones"


def _append(graph: onnx.GraphProto, backward: Backward) -> None:
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)


def add_head(
    graph: onnx.GraphProto,
    layer: str,
    log: Callable[[str], None],
    layout: contract.Layout | None = None,
    raw: str | None = None,
) -> tuple[list[onnx.NodeProto], str] | None:
    """Copy the part of the graph after ``layer``, fed by the input ``head:<layer>`` (weights shared); return the
    copied nodes and the copy of ``scores``.

    The copy takes the nodes that depend on the tapped map and lead to ``scores``. When one of them also reads a
    tensor computed from the input by another path (a skip connection around the layer), the part after the layer is
    not a function of the map alone: no head is added (logged) and ``None`` is returned. ``head:<layer>`` is NCHW;
    for another ``layout`` it is laid out back into the model's tensor ``raw`` first; a token layer with prefix
    tokens (class token) gets no head, since the map does not hold them.
    """
    tap = contract.activation_name(layer)
    layout = layout or contract.Layout()
    if layout.prefix:
        log(f"no head graph for layer '{layer}': its {layout.prefix} prefix token(s) are not part of the map")
        return None
    source = raw or tap
    after = downstream(graph, [source])
    from_input = downstream(graph, [contract.INPUT])
    needed = {contract.SCORES}
    nodes: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output) and any(i in after for i in node.input):
            nodes.append(node)
            needed.update(node.input)
    nodes.reverse()
    bypass = sorted({i for node in nodes for i in node.input if i in from_input and i not in after})
    if bypass:
        log(f"no head graph for layer '{layer}': the part after it also reads '{bypass[0]}'")
        return None
    prefix = f"onnxcam/head/{layer}/"
    head_in = contract.head_input_name(layer)
    channels = _channels(graph, tap)
    relaid = [] if layout.kind == "nchw" else from_nchw_nodes(graph, layout, head_in, prefix + "input", channels)
    renamed = {name: prefix + name for node in nodes for name in node.output} | {
        source: prefix + "input" if relaid else head_in
    }
    copies = list(relaid)
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + (node.name or node.output[0])
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed.get(o, o) for o in node.output]
        copies.append(copy)
    graph.node.extend(copies)
    tap_type = _like(graph, tap, tap).type.tensor_type
    dims = [d.dim_value for d in tap_type.shape.dim[1:]]
    dtype = helper.tensor_dtype_to_np_dtype(tap_type.elem_type)
    head_input, default = optional_input(contract.head_input_name(layer), len(dims) + 1, np.zeros((1, *dims), dtype))
    graph.input.append(head_input)
    graph.initializer.append(default)
    return copies, renamed[contract.SCORES]


def _identity_root(graph: onnx.GraphProto, name: str) -> str:
    """``name`` when it leads to ``scores``; else the tensor it copies through ``Identity`` nodes: exporters tie two
    names of one tensor (``layer4``, ``layer4.1``) by an ``Identity`` whose output is used by nothing else."""
    if contract.SCORES in downstream(graph, [name]):
        return name
    producers = {o: n for n in graph.node for o in n.output}
    while (node := producers.get(name)) is not None and node.op_type == "Identity":
        name = node.input[0]
    return name


def _as_nchw(graph: onnx.GraphProto, layer: str, layout: contract.Layout) -> str:
    """Expose ``activation:<layer>`` as ``[N, C, h, w]``: the model's tensor is renamed ``…/raw`` and laid out by
    nodes added to ``graph`` (:mod:`export.layouts`). Returns the tensor to differentiate (the raw one)."""
    tap = contract.activation_name(layer)
    if layout.kind == "nchw":
        return tap
    raw = tap + "/raw"
    for node in graph.node:
        node.input[:] = [raw if i == tap else i for i in node.input]
        node.output[:] = [raw if o == tap else o for o in node.output]
    out = next(o for o in graph.output if o.name == tap)
    info = onnx.ValueInfoProto()
    info.CopyFrom(out)
    info.name = raw
    graph.value_info.append(info)
    dims = [d.dim_value or d.dim_param or None for d in out.type.tensor_type.shape.dim]
    out.CopyFrom(helper.make_tensor_value_info(tap, out.type.tensor_type.elem_type, nchw_shape(layout, dims)))
    graph.node.extend(to_nchw_nodes(graph, layout, raw, tap, _channels(graph, tap)))
    return raw


def _channels(graph: onnx.GraphProto, tap: str) -> int:
    """``C`` of the NCHW graph output ``tap``."""
    return _like(graph, tap, tap).type.tensor_type.shape.dim[1].dim_value


def _set_outputs(graph: onnx.GraphProto, shape: tuple[int, ...]) -> None:
    """Graph outputs in contract order: scores, target_used, activation:* (gradients are appended later)."""
    taps = [o for o in graph.output if o.name.startswith(contract.ACTIVATION_PREFIX)]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(contract.SCORES, TensorProto.FLOAT, ["N", *shape]))
    graph.output.append(helper.make_tensor_value_info(contract.TARGET_USED, TensorProto.INT64, ["N"]))
    graph.output.extend(taps)


def _batch_of(info: onnx.ValueInfoProto, batch: str) -> onnx.ValueInfoProto:
    """``info`` with its first dim renamed ``batch`` (head graphs run on their own batch of maps)."""
    info.type.tensor_type.shape.dim[0].dim_param = batch
    return info


def _like(graph: onnx.GraphProto, tap: str, name: str) -> onnx.ValueInfoProto:
    """Value info for ``name`` with the type and shape of the graph output or input ``tap``."""
    for out in [*graph.output, *graph.input]:
        if out.name == tap:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(out)
            vi.name = name
            return vi
    raise KeyError(tap)
