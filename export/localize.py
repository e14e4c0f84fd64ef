"""Where a gradient goes wrong: the first node on the backward path whose local VJP disagrees with finite differences.

When a verification fails, the forward part of the explainer is evaluated once in float64 with every intermediate
tensor kept. Then, walking the nodes between the differentiated tensor and ``scores`` in backward order (the order
the reverse pass visits them), each node is cut out as a one-node model fed with its actual inputs, its VJP is built by
the same rule table, and ``⟨ȳ, (y(x + hδ) − y(x − hδ)) / 2h⟩`` is compared with ``Σ_i ⟨x̄_i, δ_i⟩`` for a random
cotangent ``ȳ`` and random directions ``δ`` (steps as in :func:`~.verify.settled_slopes`). The first node that
disagrees is named, with its op type, so a contributor knows which rule to look at.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcam import contract

from .autodiff.engine import active_nodes, differentiate
from .autodiff.graph_info import GraphInfo
from .autodiff.registry import VJPRule
from .autodiff.rules.quantize import straight_through
from .float64 import Erf, Gelu, Pad, Resize, evaluate_float64, to_float64
from .gating import reads

#: The hint when no node disagrees locally: the reference probably crossed a kink (a tie) at the verification point.
TIE_HINT = "; every node's VJP agrees locally with finite differences (a tie at the verification point?)"
#: The int8 QDQ ops whose backward is the straight-through estimator, not a VJP: never checked locally.
STE_OPS = {"QuantizeLinear", "DequantizeLinear"}

#: Local relative error above which a node's VJP is called wrong (float64 on both sides: right rules give ~1e-9).
LOCAL_TOLERANCE = 1e-3


def _forward_values(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], new_ops: list, end: str = contract.SCORES
) -> dict[str, np.ndarray]:
    """Every tensor of the forward part of ``model`` (the nodes ``end`` depends on) in float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    needed, kept = {end}, []
    for node in reversed(m.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(reads(node))
    del m.graph.node[:]
    m.graph.node.extend(reversed(kept))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(end, TensorProto.DOUBLE, None))
    m = to_float64(m)
    feeds = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    return ReferenceEvaluator(m, new_ops=[Pad, Resize, Erf, Gelu, *new_ops]).run(None, feeds, intermediate=True)  # type: ignore[return-value]


def _one_node(
    node: onnx.NodeProto, sources: list[str], values: Mapping[str, np.ndarray], info: GraphInfo, opset: list
) -> onnx.ModelProto:
    """``node`` alone: its on-path inputs ``sources`` as graph inputs (dtype and concrete shape), the rest constants."""
    inputs = [
        helper.make_tensor_value_info(s, helper.np_dtype_to_tensor_dtype(info.dtype(s)), values[s].shape)
        for s in sources
    ]
    constants = [
        numpy_helper.from_array(np.asarray(values[i]).astype(info.dtype(i)), i)
        for i in dict.fromkeys(node.input)
        if i and i not in sources
    ]
    outputs = [
        helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(info.dtype(o)), values[o].shape)
        for o in node.output
        if o
    ]
    graph = helper.make_graph([node], "local", inputs, outputs, initializer=constants)
    return helper.make_model(graph, opset_imports=opset)


def local_error(
    node: onnx.NodeProto,
    sources: list[str],
    outputs: list[str],
    values: Mapping[str, np.ndarray],
    info: GraphInfo,
    opset: list,
    new_ops: list,
    rng: np.random.Generator,
) -> float:
    """``|fd − ⟨x̄, δ⟩| / typical|⟨x̄, δ⟩|`` of ``node``'s rule at ``values``, worst of two directions; NaN when the
    differences do not settle (a kink within the step)."""
    from .verify import settled_slopes

    model = _one_node(node, sources, values, info, opset)
    cotangents = {o: rng.standard_normal(values[o].shape) for o in outputs}
    objective = outputs[0]
    if len(outputs) > 1:  # ⟨ȳ, y⟩ summed over the outputs on the path, as one scalar to differentiate
        parts = []
        for o in outputs:
            model.graph.initializer.append(numpy_helper.from_array(cotangents[o].astype(info.dtype(o)), f"c/{o}"))
            parts.append(f"s/{o}")
            model.graph.node.extend(
                [
                    helper.make_node("Mul", [o, f"c/{o}"], [f"m/{o}"]),
                    helper.make_node("ReduceSum", [f"m/{o}"], [f"s/{o}"], keepdims=0),
                ]
            )
        model.graph.node.append(helper.make_node("Sum", parts, ["objective"]))
        objective, cotangents = "objective", {"objective": np.array(1.0)}
    seed = "local/seed"
    model.graph.input.append(helper.make_tensor_value_info(seed, TensorProto.FLOAT, cotangents[objective].shape))
    backward = differentiate(model, sources, objective, seed)
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.node.extend(backward.nodes)
    full.graph.initializer.extend(backward.initializers)
    full.graph.output.extend(
        helper.make_tensor_value_info(backward.grads[s], TensorProto.FLOAT, values[s].shape) for s in sources
    )
    feeds = {s: np.asarray(values[s], np.float64) for s in sources}
    base = evaluate_float64(full, {**feeds, seed: cotangents[objective]}, new_ops)
    bars = {s: base[backward.grads[s]] for s in sources}
    worst = 0.0
    for _ in range(2):
        deltas = {s: rng.standard_normal(feeds[s].shape) * (feeds[s] != 0) * np.abs(feeds[s]).max() for s in sources}
        dot = sum(float(np.where(deltas[s] != 0, bars[s] * deltas[s], 0.0).sum()) for s in sources)
        if not np.isfinite(dot):  # a NaN or infinite gradient from finite inputs: wrong, whatever the differences
            return float("inf")
        typical = float(
            np.sqrt(sum(((bars[s] * (deltas[s] != 0)) ** 2).sum() * np.abs(feeds[s]).max() ** 2 for s in sources))
        )

        def paired(t: np.ndarray) -> np.ndarray:
            shifted = {s: feeds[s] + t[0] * deltas[s] for s in sources}  # noqa: B023
            out = evaluate_float64(model, {**shifted, seed: cotangents[objective]}, new_ops)
            return np.array([float((out[objective] * cotangents[objective]).sum())])

        fd = settled_slopes(paired, paired(np.zeros(1)), np.array([max(typical, 1e-300)]), LOCAL_TOLERANCE / 4)[0]
        if np.isnan(fd):
            return float("nan")
        worst = max(worst, abs(fd - dot) / max(typical, 1e-300))
    return worst


def first_wrong_node(
    explainer: onnx.ModelProto,
    source: str,
    feeds: dict[str, np.ndarray],
    new_ops: list,
    overrides: Mapping[str, VJPRule] | None = None,
    end: str = contract.SCORES,
) -> str:
    """A sentence naming the first node (backward order) between ``source`` and ``end`` (the scores, or the unit
    tensor of the unit path) whose local VJP disagrees, to append to a verification error; nodes whose op a modified
    ReLU rule overrides, and an int8 QDQ graph's ``QuantizeLinear``/``DequantizeLinear`` (the straight-through
    estimator), are not VJPs and are skipped (``new_ops``: kernels for ops ``onnx.reference`` lacks in float64)."""
    info = GraphInfo(explainer)
    ste = straight_through(explainer.graph)  # int8 QDQ: the gradient crosses QuantizeLinear's integer output
    path, on_path = active_nodes(explainer.graph, [source], end, lambda n: info.dtype(n).kind == "f" or n in ste)
    try:
        forward = _forward_values(explainer, feeds, new_ops, end)
        values = {**forward, **{k: v for k, v in feeds.items() if k == source}}
        values.update({t.name: numpy_helper.to_array(t) for t in explainer.graph.initializer})
    except Exception as exc:  # localisation is a hint: it never replaces the verdict
        return f"; the faulty node could not be located ({type(exc).__name__})"
    rng = np.random.default_rng(0)
    skipped = set(overrides or {}) | (STE_OPS if ste else set())
    opset = list(explainer.opset_import)
    for node in reversed(path):
        if node.op_type in skipped:
            continue
        sources = [i for i in dict.fromkeys(node.input) if i in on_path]
        outputs = [o for o in node.output if o in on_path]
        try:
            error = local_error(node, sources, outputs, values, info, opset, new_ops, rng)
        except Exception:  # a node that cannot be cut out alone (or evaluated) is not blamed
            continue
        if error > LOCAL_TOLERANCE:
            return (
                f"; first node on the backward path whose VJP disagrees with finite differences: "
                f"'{node.name or node.output[0]}' ({node.op_type}, local relative error {error:.1e}; its rule is "
                f"@rule('{node.op_type}') in export/autodiff/rules/)"
            )
    if skipped - STE_OPS:
        return f"; every node's VJP agrees locally: look at the modified rule of {', '.join(sorted(skipped - STE_OPS))}"
    if ste:
        return (
            "; every float node's VJP agrees locally: look at the straight-through rules of QuantizeLinear and "
            "DequantizeLinear (export/autodiff/rules/quantize.py)"
        )
    return TIE_HINT
