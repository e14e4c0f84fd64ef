"""Channels-last feature maps ``[N, h, w, C]`` of an ONNX file (timm and torchvision Swin), told apart with certainty.

An ONNX file has no modules to read a layout hint from; a 4-D tensor is taken as channels-last only where the graph
says so: a LayerNorm over its last axis (:mod:`.onnx_layer_norms`) writes or reads it, or a MatMul contracts its last
axis with a constant ``[C, K]`` weight (so ``C`` is static and is the feature axis), and its ``h × w`` (measured by
running the graph once where shape inference leaves them symbolic) is a grid of the input. The default layer of such
a model is the one the PyTorch path picks (:func:`export.layer_choice.choose_default`): the last stage's output,
skipping a trailing LayerNorm and a permute to NCHW (pytorch-grad-cam's ``swinT_example.py`` explains
``layers[-1].blocks[-1].norm2`` of the older, token-layout timm Swin; the stage output is its layout-equivalent).
"""

from __future__ import annotations

import onnx

from onnxcam import contract
from onnxcam.contract import Layout

from .autodiff.graph_info import GraphInfo
from .layouts import classify, onnx_layout
from .onnx_layer_norms import layer_norms
from .onnx_token_layer import measured_shapes, symbolic_tokens

#: Transpose permutation of channels-last to NCHW (torchvision Swin's ``Permute([0, 3, 1, 2])``).
TO_NCHW = [0, 3, 1, 2]


def channels_last(model: onnx.ModelProto, info: GraphInfo, name: str, size: tuple[int, int]) -> bool:
    """Whether the 4-D tensor ``name`` of the forward ``model`` (input ``input``) is certainly ``[N, h, w, C]`` on an
    ``size`` ``(H, W)`` input (see the module docstring)."""
    shape = info.shape(name)
    if shape is None or len(shape) != 4 or not isinstance(shape[3], int) or not _feature_axis(model, info, name):
        return False
    grid = shape[1:3]
    try:
        if not all(isinstance(d, int) for d in grid):
            grid = measured_shapes(model, [name], size)[0][1:3]
        return classify(name, [1, *grid, shape[3]], size, hint="channels-last").kind == "channels-last"
    except Exception:  # LayoutError, or a graph onnxruntime cannot run: not certain, the caller's refusal stands
        return False


def onnx_layer_layout(model: onnx.ModelProto, info: GraphInfo, layer: str, size: tuple[int, int]) -> Layout:
    """The layout of the tapped ``layer`` of the forward ``model``: channels-last where :func:`channels_last` is
    certain, else :func:`.layouts.onnx_layout`'s (tokens, NCHW, or its one-line refusal); a token count that shape
    inference leaves symbolic (HF Swin's padding arithmetic) is measured by running the graph once."""
    tap = contract.activation_name(layer)
    if channels_last(model, info, tap, size):
        return Layout("channels-last")
    shape = info.shape(tap) or []
    if symbolic_tokens(shape):
        shape = [shape[0], measured_shapes(model, [tap], size)[0][1], shape[2]]
    return onnx_layout(layer, shape, size)


def before_final_norm(model: onnx.ModelProto, info: GraphInfo, name: str, size: tuple[int, int]) -> str:
    """The channels-last stage output that ``name`` (the last 4-D map before pooling) comes from through a trailing
    LayerNorm over channels and/or a Transpose to NCHW, each its input's only reader; ``name`` when there is none."""
    norms = {n.output: n for n in layer_norms(model, info).values()}
    nodes = model.graph.node
    producer = {o: i for i, node in enumerate(nodes) for o in node.output}
    current = name
    while True:
        if current in norms:
            source, chain = norms[current].input, norms[current].nodes
        elif current in producer and _is_to_nchw(nodes[producer[current]]):
            source, chain = nodes[producer[current]].input[0], {producer[current]}
        else:
            break
        if any(source in node.input for i, node in enumerate(nodes) if i not in chain):
            break  # read elsewhere too (a residual): not a final norm
        current = source
    return current if current != name and channels_last(model, info, current, size) else name


def _is_to_nchw(node: onnx.NodeProto) -> bool:
    return node.op_type == "Transpose" and [list(a.ints) for a in node.attribute if a.name == "perm"] == [TO_NCHW]


def _feature_axis(model: onnx.ModelProto, info: GraphInfo, name: str) -> bool:
    """Whether a LayerNorm over the last axis writes or reads ``name``, or a MatMul contracts its last axis with a
    constant ``[C, K]`` weight."""
    channels = info.shape(name)[-1]  # type: ignore[index]
    norms = layer_norms(model, info).values()
    if any(name in (n.input, n.output) for n in norms):
        return True
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] == name:
            weight = info.constant(node.input[1])
            if weight is not None and weight.ndim == 2 and weight.shape[0] == channels:
                return True
    return False
