"""Turn a forward graph with tapped layers into an explainer graph that follows :mod:`onnxcam.contract`.

Input: an ONNX model whose input is ``input``, whose outputs are ``scores`` and one ``activation:<layer>`` per layer.
Added: the ``target`` input, ``target_used`` (top-1 where ``target < 0``), the one-hot seed
``ḡ_scores[n, k] = [k = target_used[n]]``, and the reverse-mode graph giving ``gradient:<layer>`` per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract

from .autodiff.context import GradientError
from .autodiff.engine import differentiate
from .autodiff.graph_info import GraphInfo
from .errors import ExportError

_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity")


class OutputError(ExportError):
    """The model's output cannot be read as ``[N, classes]``."""


def logits_of(model: onnx.ModelProto) -> tuple[str, str]:
    """The tensor holding the class scores before any trailing Softmax, and what it is (``logits``/``scores``).

    Walks back from ``scores`` through shape-only ops; a Softmax met there is skipped (CAMs explain logits).
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    name = contract.SCORES
    while (node := producers.get(name)) is not None and node.op_type in _PASS_THROUGH:
        name = node.input[0]
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        return node.input[0], "logits"
    return contract.SCORES, "logits"


def _class_count(info: GraphInfo, name: str) -> int:
    """``K`` when ``name`` is shaped ``[N, K]`` or ``[N, K, 1, …, 1]``, else :class:`OutputError`."""
    shape = info.shape(name)
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or any(d != 1 for d in shape[2:]):
        raise OutputError(
            f"the model's output '{name}' has shape {list(shape) if shape else 'unknown'}; onnxcam needs "
            "[N, classes] (trailing dims of size 1 are fine)"
        )
    return int(shape[1])


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def build_explainer(forward: onnx.ModelProto, layers: Sequence[str], metadata: contract.Metadata) -> onnx.ModelProto:
    """Add ``target``, ``target_used`` and ``gradient:<layer>`` to ``forward`` and stamp the contract metadata."""
    model = onnx.ModelProto()
    model.CopyFrom(forward)
    graph = model.graph
    taps = [contract.activation_name(layer) for layer in layers]
    outputs = {o.name for o in graph.output}
    for name in [contract.SCORES, *taps]:
        if name not in outputs:
            raise GradientError(f"forward graph has no output '{name}'")

    # scores := logits as [N, K]
    logits, kind = logits_of(model)
    info = GraphInfo(model)
    classes = _class_count(info, logits)
    if logits != contract.SCORES or len(info.shape(logits) or ()) != 2:
        raw = contract.SCORES + "/raw"
        for node in graph.node:
            node.output[:] = [raw if o == contract.SCORES else o for o in node.output]
            node.input[:] = [raw if i == contract.SCORES else i for i in node.input]
        source = raw if logits == contract.SCORES else logits
        graph.node.append(helper.make_node("Flatten", [source], [contract.SCORES], name="onnxcam/scores", axis=1))

    # target_used = target < 0 ? argmax(scores) : target;  seed = one_hot(target_used, K)
    graph.input.append(helper.make_tensor_value_info(contract.TARGET, TensorProto.INT64, ["N"]))
    consts = {
        "onnxcam/zero": np.array(0, np.int64),
        "onnxcam/depth": np.array(classes, np.int64),
        "onnxcam/onehot_values": np.array([0.0, 1.0], np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    seed = "onnxcam/seed"
    graph.node.extend(
        [
            helper.make_node("ArgMax", [contract.SCORES], ["onnxcam/top1"], name="onnxcam/top1", axis=1, keepdims=0),
            helper.make_node("Less", [contract.TARGET, "onnxcam/zero"], ["onnxcam/use_top1"], name="onnxcam/use_top1"),
            helper.make_node(
                "Where",
                ["onnxcam/use_top1", "onnxcam/top1", contract.TARGET],
                [contract.TARGET_USED],
                name="onnxcam/target_used",
            ),
            helper.make_node(
                "OneHot",
                [contract.TARGET_USED, "onnxcam/depth", "onnxcam/onehot_values"],
                [seed],
                name="onnxcam/seed",
                axis=-1,
            ),
        ]
    )
    _set_outputs(graph, classes)
    backward = differentiate(model, taps, contract.SCORES, seed)
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)
    for layer, tap in zip(layers, taps, strict=True):
        grad = contract.gradient_name(layer)
        graph.node.append(helper.make_node("Identity", [backward.grads[tap]], [grad], name=grad))
        graph.output.append(_like(graph, tap, grad))
    _prune(graph)
    props = dict(metadata.to_props(), **{contract.META_SCORES_KIND: kind})
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def _set_outputs(graph: onnx.GraphProto, classes: int) -> None:
    """Graph outputs in contract order: scores, target_used, activation:* (gradients are appended later)."""
    taps = [o for o in graph.output if o.name.startswith(contract.ACTIVATION_PREFIX)]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(contract.SCORES, TensorProto.FLOAT, ["N", classes]))
    graph.output.append(helper.make_tensor_value_info(contract.TARGET_USED, TensorProto.INT64, ["N"]))
    graph.output.extend(taps)


def _like(graph: onnx.GraphProto, tap: str, name: str) -> onnx.ValueInfoProto:
    """Value info for ``name`` with the type and shape of the tapped output ``tap``."""
    for out in graph.output:
        if out.name == tap:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(out)
            vi.name = name
            return vi
    raise KeyError(tap)
