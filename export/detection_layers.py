"""The default layers of a detector: the feature maps where its head forks into branches (box, class …), per scale.

A classifier's default (the last 4-D map before pooling) lands inside a detector's head (its class conv, or the
output concat), where the box branch and the other scales are already split off. The map people explain is the
neck's output that feeds the head's branches: the last 4-D tensor that *forks*, read by several independent
branches that all lead to the output:

* PyTorch: the last module output read by two or more leaf modules (``nn.SiLU``, ``nn.Conv2d`` … are leaves; a
  residual ``x + f(x)`` is read by one module, so it is no fork);
* ONNX: the last 4-D tensor on the way to ``scores`` read by two or more nodes (``Shape``, ``Slice``, ``Split``,
  ``Gather`` aside: they read a part) none of which lies
  downstream of another (a SiLU's ``x · σ(x)``, a residual add and a split-and-concat rejoin their own branch).

A multi-scale head reads several such maps, one per scale (YOLOv8's P3, P4, P5; an FPN's levels): the defaults are
all the forks with at least two *head branches* — readers from which only forks of the same spatial size are reached
(a neck map is also read by the next scale's downsampling conv, which leads to a fork of another size: no head
branch; a backbone map's readers lead to later scales) — less the forks inside a head branch of another one (a head's
own tower). Their maps are fused.
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

SCALES_REASON = "the neck's scales: maps read by several head branches, fused"

#: Readers that take a part of a tensor (its shape, a slice): a box conv's output cut into ``xy`` and ``wh`` is split,
#: not forked.
_PARTS = ("Shape", "Slice", "Split", "Gather")


def onnx_forks(model: onnx.ModelProto) -> list[str]:
    """The neck's scales of ``model`` (:func:`_scales`) among the 4-D tensors on the way to ``scores`` read by ≥ 2
    mutually independent nodes; graph order."""
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
    size = {name: tuple(info.shape(name)[2:]) for name in forks}
    reached = {(name, id(r)): downstream(graph, list(r.output)) & set(forks) for name in forks for r in readers[name]}
    return _scales(
        forks,
        lambda f: [reached[f, id(r)] - {f} for r in readers[f]],
        lambda f, g: size[f] == size[g],
    )


def _scales(forks: list, branches: Callable[[object], list[set]], same_size: Callable[[object, object], bool]) -> list:
    """The forks with ≥ 2 head branches — readers from which only forks of the same size are reached (a neck map's
    downsampling conv leads to the next scale: no head branch) — less those reached through a head branch of another
    such fork (a head's own tower, e.g. FCOS's regression tower read by its box and centerness convs)."""
    heads = {f: [b for b in branches(f) if all(same_size(f, g) for g in b)] for f in forks}
    scales = [f for f in forks if len(heads[f]) >= 2]
    inside = {g for f in scales for b in heads[f] for g in b}
    return [f for f in scales if f not in inside]


def _independent(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> bool:
    """No node of ``nodes`` reads a tensor computed from another one's outputs."""
    for node in nodes:
        after = downstream(graph, list(node.output))
        if any(other is not node and any(i in after for i in other.input) for other in nodes):
            return False
    return True


def torch_forks(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """The neck's scales of ``model`` (``nn.Module``), for one blank input ``[1, *input_shape]``: the outermost names
    of the 4-D module outputs read by ≥ 2 leaf modules (:func:`_scales`; what is reached from a reader's output: the
    autograd graph); call order."""
    import torch

    produced: list[tuple[str, torch.Tensor]] = []
    reads: dict[int, set[str]] = {}
    calls: dict[int, list[torch.Tensor]] = {}  # tensor id → the outputs of the leaf calls reading it
    alive: list[torch.Tensor] = []  # keeps every tensor read alive, so no id is reused during the run

    def hook(name: str, leaf: bool):
        def record(_module: object, inputs: tuple, output: object) -> None:
            if leaf:
                for tensor in inputs:
                    if isinstance(tensor, torch.Tensor):
                        alive.append(tensor)
                        reads.setdefault(id(tensor), set()).add(name)
                        if isinstance(output, torch.Tensor):
                            calls.setdefault(id(tensor), []).append(output)
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                produced.append((name, output))

        return record

    modules = [(n, m) for n, m in model.named_modules() if n]
    handles = [m.register_forward_hook(hook(n, not any(True for _ in m.children()))) for n, m in modules]
    try:
        with torch.enable_grad():
            model.eval()(torch.zeros(1, *input_shape, requires_grad=True))
    finally:
        for handle in handles:
            handle.remove()
    forks = list({id(t): t for _, t in produced if len(reads.get(id(t), ())) >= 2}.values())
    history = {id(f): _history(f) for f in forks}
    sizes = {id(f): tuple(f.shape[2:]) for f in forks}
    scales = _scales(
        [id(f) for f in forks],
        lambda f: [{id(g) for g in forks if id(g) != f and out.grad_fn in history[id(g)]} for out in calls.get(f, [])],
        lambda f, g: sizes[f] == sizes[g],
    )
    return [min((n for n, t in produced if id(t) == f), key=lambda n: (n.count("."), len(n))) for f in scales]


def _history(tensor: torch.Tensor) -> set:
    """The autograd nodes ``tensor`` was computed through."""
    seen: set = set()
    todo = [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return seen


def torch_detector_layers(
    model: torch.nn.Module,
    input_shape: tuple[int, int, int],
    scores_from: str | None,
    task: str | None,
    layout: str | None,
) -> list[str]:
    """:func:`torch_forks` when ``model``'s output is a detector's (:func:`.detection_output.resolve_layout`), else
    ``[]``."""
    import torch

    from .detection_output import resolve_layout
    from .torch_outputs import pick

    if task == "classify":
        return []
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32))
    with torch.no_grad():
        sample = pick(model.eval()(x), scores_from)[0].numpy()
    detection = resolve_layout(sample.shape, task, layout, sample if sample.ndim == 2 else None)
    return torch_forks(model, input_shape) if detection else []


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
    ``[N, *input_shape]``); for a detector whose layer was the classifier default (``default_layers``; ``layers``
    empty where there was none), the taps move to :func:`onnx_forks`. Returns the graph, its layers and the
    detection (``None``: not a detector)."""
    forward, detection = as_detection(forward, input_shape, task, layout, log)
    forks = onnx_forks(forward) if detection and default_layers else []
    forks = [fork.removeprefix(contract.ACTIVATION_PREFIX) for fork in forks]
    if not forks or forks == layers:
        return forward, layers, detection
    graph = forward.graph
    for old in layers:  # the classifier default, if there is one
        rename(graph, contract.activation_name(old), old)
    kept = [o for o in graph.output if o.name not in layers]
    del graph.output[:]
    graph.output.extend(kept)
    for fork in forks:
        rename(graph, fork, contract.activation_name(fork))
    info = GraphInfo(forward)
    graph.output.extend(
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(info.dtype(name)), info.shape(name)
        )  # a float16 graph's taps are float16
        for name in map(contract.activation_name, forks)
    )
    log(f"detector: explaining {', '.join(map(repr, forks))} by default ({SCALES_REASON}; --layer to choose)")
    return forward, forks, detection
