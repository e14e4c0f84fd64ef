"""The default layer of a detector: the last feature map where its head forks into branches (box, class …).

A classifier's default (the last 4-D map before pooling) lands inside a detector's head (its class conv, or the
output concat), where the box branch and the other scales are already split off. The map people explain is the
neck's output that feeds the head's branches: the last 4-D tensor that *forks*, read by several independent
branches that all lead to the output:

* PyTorch: the last module output read by two or more leaf modules (``nn.SiLU``, ``nn.Conv2d`` … are leaves; a
  residual ``x + f(x)`` is read by one module, so it is no fork);
* ONNX: the last 4-D tensor on the way to ``scores`` read by two or more nodes (``Shape``, ``Slice``, ``Split``,
  ``Gather`` aside: they read a part) none of which lies
  downstream of another (a SiLU's ``x · σ(x)``, a residual add and a split-and-concat rejoin their own branch).

For a multi-scale head (YOLOv8's three scales) that is the coarsest scale's map; name the others with ``--layer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxcam import contract

from .autodiff.engine import downstream
from .autodiff.graph_info import GraphInfo
from .detection_output import as_detection
from .onnx_prep import _rename as rename

if TYPE_CHECKING:
    import torch

#: Readers that take a part of a tensor (its shape, a slice): a box conv's output cut into ``xy`` and ``wh`` is split,
#: not forked.
_PARTS = ("Shape", "Slice", "Split", "Gather")


def onnx_fork(model: onnx.ModelProto) -> str | None:
    """The last 4-D tensor of ``model`` on the way to ``scores`` read by ≥ 2 mutually independent nodes, or ``None``."""
    graph = model.graph
    needed = {contract.SCORES}
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            needed.update(node.input)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type not in _PARTS and any(o in needed for o in node.output):
            for name in dict.fromkeys(node.input):
                readers.setdefault(name, []).append(node)
    info = GraphInfo(model)
    forks = [
        name
        for node in graph.node
        for name in node.output
        if len(readers.get(name, ())) >= 2 and len(info.shape(name) or ()) == 4 and _independent(graph, readers[name])
    ]
    return forks[-1] if forks else None


def _independent(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> bool:
    """No node of ``nodes`` reads a tensor computed from another one's outputs."""
    for node in nodes:
        after = downstream(graph, list(node.output))
        if any(other is not node and any(i in after for i in other.input) for other in nodes):
            return False
    return True


def torch_fork(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> str | None:
    """The outermost name of the last module output read by ≥ 2 leaf modules of ``model`` (``nn.Module``), for one
    blank input ``[1, *input_shape]``; ``None`` when nothing forks."""
    import torch

    produced: list[tuple[str, torch.Tensor]] = []
    reads: dict[int, set[str]] = {}
    alive: list[torch.Tensor] = []  # keeps every tensor read alive, so no id is reused during the run

    def hook(name: str, leaf: bool):
        def record(_module: object, inputs: tuple, output: object) -> None:
            if leaf:
                for tensor in inputs:
                    if isinstance(tensor, torch.Tensor):
                        alive.append(tensor)
                        reads.setdefault(id(tensor), set()).add(name)
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                produced.append((name, output))

        return record

    modules = [(n, m) for n, m in model.named_modules() if n]
    handles = [m.register_forward_hook(hook(n, not any(True for _ in m.children()))) for n, m in modules]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    forks = [t for _, t in produced if len(reads.get(id(t), ())) >= 2]
    if not forks:
        return None
    last = forks[-1]
    return min((name for name, t in produced if t is last), key=lambda n: (n.count("."), len(n)))


def torch_detector_layer(
    model: torch.nn.Module,
    input_shape: tuple[int, int, int],
    scores_from: str | None,
    task: str | None,
    layout: str | None,
) -> str | None:
    """:func:`torch_fork` when ``model``'s output is a detector's (:func:`.detection_output.resolve_layout`)."""
    import torch

    from .detection_output import resolve_layout
    from .torch_outputs import pick

    if task == "classify":
        return None
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32))
    with torch.no_grad():
        sample = pick(model.eval()(x), scores_from)[0].numpy()
    detection = resolve_layout(sample.shape, task, layout, sample if sample.ndim == 2 else None)
    return torch_fork(model, input_shape) if detection else None


def detector_forward(
    forward: onnx.ModelProto,
    layers: list[str],
    default_layers: bool,
    input_shape: tuple[int, int, int],
    task: str | None,
    layout: str | None,
    log: Callable[[str], None],
) -> tuple[onnx.ModelProto, list[str], contract.Detection | None]:
    """:func:`.detection_output.as_detection` on a prepared ONNX forward graph (input float32 NCHW
    ``[N, *input_shape]``); for a detector whose layer was the classifier default (``default_layers``), the tap moves
    to :func:`onnx_fork`. Returns the graph, its layers and the detection (``None``: not a detector)."""
    forward, detection = as_detection(forward, input_shape, task, layout, log)
    fork = onnx_fork(forward) if detection and default_layers else None
    fork = fork.removeprefix(contract.ACTIVATION_PREFIX) if fork else None
    if fork is None or [fork] == layers:
        return forward, layers, detection
    graph = forward.graph
    (old,) = layers
    rename(graph, contract.activation_name(old), old)
    kept = [o for o in graph.output if o.name != old]
    del graph.output[:]
    graph.output.extend(kept)
    rename(graph, fork, contract.activation_name(fork))
    shape = GraphInfo(forward).shape(contract.activation_name(fork))
    graph.output.append(
        onnx.helper.make_tensor_value_info(contract.activation_name(fork), onnx.TensorProto.FLOAT, shape)
    )
    log(f"detector: explaining '{fork}' by default (its last map read by several head branches; --layer to choose)")
    return forward, [fork], detection
