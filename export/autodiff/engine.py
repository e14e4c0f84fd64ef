"""Reverse-mode differentiation of an ONNX graph, emitted as more ONNX nodes.

Only the part of the graph that lies downstream of the *sources* (the tapped layers) and upstream of the
differentiated *output* is visited, and no weight gradients are formed, so the backward costs about one extra pass
over the head of the network. Each node's VJP comes from the rule table in :mod:`.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from . import rules  # noqa: F401  (importing registers every rule)
from .context import Emitter, GradientError, VJPContext
from .graph_info import GraphInfo
from .registry import RULES, VJPRule
from .rules.quantize import straight_through


@dataclass
class Backward:
    """New nodes/initializers computing ``∂⟨seed, output⟩/∂source`` for each source (``grads[source]``)."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    grads: dict[str, str]


def downstream(
    graph: onnx.GraphProto, sources: Sequence[str], keep: Callable[[str], bool] = lambda _: True
) -> set[str]:
    """``sources`` and every tensor computed from them (only through tensors ``keep`` accepts)."""
    reached = set(sources)
    for node in graph.node:
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if keep(o))
    return reached


def active_nodes(
    graph: onnx.GraphProto, sources: Sequence[str], output: str, differentiable: Callable[[str], bool]
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on some path source → output (in topological order) and the tensors on those paths.

    Only ``differentiable`` (floating-point) tensors carry gradients: shapes, indices and masks computed from a
    source (``Shape``, ``ArgMax``, ``Greater`` …) are constants to the backward pass.
    """
    reached = downstream(graph, sources, differentiable)
    on_path = {output} if output in reached else set()
    path_nodes: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in on_path for o in node.output) and any(i in reached for i in node.input):
            path_nodes.append(node)
            on_path.update(i for i in node.input if i in reached)
    path_nodes.reverse()
    return path_nodes, on_path


def differentiate(
    model: onnx.ModelProto,
    sources: Sequence[str],
    output: str,
    seed: str,
    overrides: Mapping[str, VJPRule] | None = None,
    prefix: str = "grad",
) -> Backward:
    """Build the VJP ``seedᵀ · ∂output/∂source`` for every source tensor.

    ``seed`` names a tensor shaped like ``output`` (it may be produced by nodes the caller adds). ``overrides``
    replaces rules of the table for this pass (e.g. guided backpropagation's ``Relu``); ``prefix`` starts the new
    tensor names, so several passes over one graph are told apart. Raises
    :class:`GradientError` naming the node when an op on the path has no rule, or a source does not reach ``output``.
    """
    graph = model.graph
    info = GraphInfo(model)
    quantized = straight_through(graph)  # int8 QDQ: QuantizeLinear's integer output carries the STE gradient
    path_nodes, on_path = active_nodes(
        graph, sources, output, lambda name: info.dtype(name).kind == "f" or name in quantized
    )
    for source in sources:
        if source not in on_path:
            raise GradientError(f"tensor '{source}' does not influence '{output}': nothing to differentiate")

    taken = {n for node in graph.node for n in (*node.input, *node.output, node.name)}
    taken |= {t.name for t in graph.initializer} | {v.name for v in graph.input} | {seed}
    emitter = Emitter(taken, prefix)
    contributions: dict[str, list[str]] = {output: [seed]}

    def total(name: str) -> str | None:
        parts = contributions.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            parts[:] = emitter.op("Sum", parts)
        return parts[0]

    table = {**RULES, **(overrides or {})}
    for node in reversed(path_nodes):
        vjp = table.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        label = node.name or node.output[0]
        if vjp is None:
            raise GradientError(
                f"no gradient rule for op '{node.op_type}' (domain '{node.domain or 'ai.onnx'}') at node '{label}' on "
                f"the path to the scores; add one with @rule('{node.op_type}') in export/autodiff/rules/"
            )
        emitter.scope = label
        needs = [bool(i) and i in on_path for i in node.input]
        ctx = VJPContext(node, [total(o) for o in node.output], needs, info, emitter)
        input_grads = list(vjp(ctx))
        for i, (name, needed) in enumerate(zip(node.input, needs, strict=False)):
            g = input_grads[i] if i < len(input_grads) else None
            if needed and g is None:
                raise GradientError(
                    f"{node.op_type} node '{label}': its rule gives no gradient for input {i} ('{name}')"
                )
            if needed:
                contributions.setdefault(name, []).append(g)

    grads = {source: total(source) for source in sources}
    return Backward(emitter.nodes, emitter.initializers, grads)  # type: ignore[arg-type]
