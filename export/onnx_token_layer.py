"""The default layer of an ONNX transformer (ViT and other token models): the token tensor of the last block.

An ONNX ViT has no NCHW map after its patch embedding; the last 4-D tensor is inside the last attention
(``[N, heads, T, d]``), not a feature map. The layer a practitioner explains is pytorch-grad-cam's
``blocks[-1].norm1`` with a token ``reshape_transform`` (jacobgil/pytorch-grad-cam, ``usage_examples/vit_example.py``):
the output of the last LayerNorm (the op, or its decomposition by exporters at opset < 17:
:mod:`.onnx_layer_norms`) whose patch tokens reach the scores (after it, the block's MLP, the final LayerNorm
and the class-token select act per token, so the patch tokens get no gradient). As in the PyTorch path
(:func:`export.layer_choice.choose_default`), reaching is measured: one backward pass of the graph (our own VJP rules,
onnxruntime, one random image) from the scores to every candidate, a candidate reached when its patch-token gradient
is not exactly 0. Without prefix tokens (a token mean feeds the head), the tensor the last reached LayerNorm reads
(the last block's output) is the map, as the PyTorch path skips a trailing LayerNorm, provided that LayerNorm is its
only reader (a final norm, not one inside a block beside a residual).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import numpy as np
import onnx
from onnx import helper

from onnxcam import contract
from onnxcam.contract import Layout

from . import large_protos
from .autodiff.context import GradientError
from .autodiff.engine import differentiate
from .autodiff.graph_info import GraphInfo
from .inputs import read_onnx_input
from .layers import LayerError
from .layouts import LayoutError, classify
from .onnx_layer_norms import LayerNorm, layer_norms
from .source_batch import declared_batch

#: How many ``--layer`` candidates a refusal names.
SHOWN = 3


def _is_tokens(model: onnx.ModelProto, info: GraphInfo, name: str, shape: Sequence | None = None) -> bool:
    """Whether ``name`` (of ``shape``, else its inferred one) is a float ``[N, T, C]`` tensor, ``T`` and ``C > 1``
    static (``N`` symbolic, or the file's batch where it is kept fixed: :mod:`.source_batch`); ``[N, C, 1]`` is a
    pooled vector."""
    batch = declared_batch(model)
    shape = shape or info.shape(name)
    return (
        shape is not None
        and len(shape) == 3
        and (shape[0] == batch if batch is not None else not isinstance(shape[0], int))
        and all(isinstance(d, int) for d in shape[1:])
        and shape[2] > 1
        and info.dtype(name).kind == "f"
    )


def symbolic_tokens(shape: Sequence | None) -> bool:
    """Whether ``shape`` is tokens ``[N, T, C]`` with ``C`` static and ``T`` left symbolic by shape inference (HF
    Swin's padding arithmetic)."""
    return bool(shape) and len(shape) == 3 and isinstance(shape[2], int) and not isinstance(shape[1], int)


def measured_shapes(model: onnx.ModelProto, names: Sequence[str], size: tuple) -> list[tuple[int, ...]]:
    """The shapes of ``names`` on one random ``size`` image (the graph run once by onnxruntime)."""
    session = large_protos.session(model, outputs=[helper.make_empty_tensor_value_info(n) for n in names])
    return [np.shape(v) for v in session.run(None, {contract.INPUT: random_input(model, size)})]


def _measured_tokens(model: onnx.ModelProto, info: GraphInfo, names: Sequence[str], size: tuple) -> dict[str, tuple]:
    """The shapes of ``names``, a :func:`symbolic_tokens` count measured by one run of the graph (if it runs)."""
    shapes = {name: info.shape(name) for name in names}
    symbolic = [n for n, s in shapes.items() if symbolic_tokens(s)]
    if symbolic:
        try:
            measured = measured_shapes(model, symbolic, size)
        except Exception:  # a graph onnxruntime cannot run: the inferred shapes stand
            return shapes
        for name, shape in zip(symbolic, measured, strict=True):
            shapes[name] = (shapes[name][0], shape[1], shapes[name][2])  # type: ignore[index]
    return shapes


def _token_norms(
    model: onnx.ModelProto, info: GraphInfo, needed: set[str], size: tuple
) -> tuple[list[tuple[int, LayerNorm]], dict[str, tuple]]:
    """LayerNorms (the op or its decomposition: :mod:`.onnx_layer_norms`) with token outputs ``[N, T, C]`` on the way
    to the scores, with the indices of the nodes that give their outputs, in graph order; and the shapes of their
    inputs and outputs (:func:`_measured_tokens`)."""
    norms = [n for n in layer_norms(model, info).values() if n.output in needed]
    shapes = _measured_tokens(model, info, [name for n in norms for name in (n.input, n.output)], size)
    return sorted((n.last, n) for n in norms if _is_tokens(model, info, n.output, shapes[n.output])), shapes


def token_default(
    model: onnx.ModelProto, info: GraphInfo, needed: set[str], after: int, input_size: tuple[int, int] | None
) -> tuple[str, Layout, str] | None:
    """The default token layer of the prepared forward ``model`` (input ``input``, output ``scores``) when
    LayerNorms over tokens follow its last 4-D candidate (node index ``after``, -1 when none), with its layout and
    why; ``None`` for other models. ``needed``: the tensors the scores depend on. Raises a one-line
    :class:`LayerError` naming ``--layer`` candidates when the choice is not certain (tokens that split into no grid
    of the input, a backward pass that cannot be built, no candidate reached)."""
    size = tuple(input_size or read_onnx_input(model).size or (224, 224))
    found, shapes = _token_norms(model, info, needed, size)
    if not found or found[-1][0] < after:
        _refuse_attention(model, info, needed, after)
        return None
    norms = [norm.output for _, norm in found]
    layouts: dict[str, Layout] = {}
    for name in norms:
        try:
            layouts[name] = classify(name, [1, *shapes[name][1:]], size)  # type: ignore[index]
        except LayoutError:
            continue
    if not layouts:
        _refuse(norms, f"its token tensors ({shapes[norms[-1]]}) split into no grid of the {size[0]}x{size[1]} input")
    reached = _reached(model, list(layouts), layouts, size)
    if not reached:
        _refuse(list(layouts), "the scores' gradient is 0 at the patch tokens of every LayerNorm output")
    last = reached[-1]
    if layouts[last].prefix:
        return last, layouts[last], "the last LayerNorm whose patch tokens reach the scores: ViT's blocks[-1].norm1"
    norm = next(n for _, n in found if n.output == last)
    block = norm.input
    readers = [i for i, n in enumerate(model.graph.node) if block in n.input and i not in norm.nodes]
    if shapes[block] != shapes[last] or readers:  # not a final norm: inside a block (residual)
        _refuse(reached, f"no class token, and the last LayerNorm '{last}' is not a final norm after the blocks")
    return block, layouts[last], "the last block's tokens, before the final LayerNorm"


def _refuse_attention(model: onnx.ModelProto, info: GraphInfo, needed: set[str], after: int) -> None:
    """Refuse when the last 4-D map (node ``after``) lies among token tensors ``[N, T, C]`` with one of its dims
    ``T`` (an attention's ``[N, heads, T, d]`` or ``[N, heads, T, T]``, no feature map) and no LayerNorm over the
    tokens was recognised to choose by; return otherwise (a CNN, a hybrid whose last stage is convolutional)."""
    if after < 0:
        return
    nodes = model.graph.node
    tokens = [(i, o) for i, node in enumerate(nodes) for o in node.output if o in needed and _is_tokens(model, info, o)]
    counts = {info.shape(o)[1] for i, o in tokens if i > after}  # type: ignore[index]
    last = next((o for o in nodes[after].output if o in needed), nodes[after].output[0])
    shape = info.shape(last) or ()
    if counts & set(shape[1:]):
        width = info.shape(tokens[-1][1])  # the model's tokens [N, T, C], not a qkv projection's [N, T, 3C]
        _refuse(
            [o for i, o in tokens if i < after and info.shape(o) == width] or [o for _, o in tokens],
            f"its last 4-D tensor '{last}' {['N', *shape[1:]]} is an attention's among token tensors [N, T, C], "
            "and no LayerNorm over the tokens was recognised",
        )


def _reached(model: onnx.ModelProto, names: Sequence[str], layouts: dict[str, Layout], size: tuple) -> list[str]:
    """The ``names`` whose patch tokens get a non-zero gradient of ``Σ scores`` on one random image."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    seed = "token_default/seed"
    graph.node.append(helper.make_node("Shape", [contract.SCORES], [seed + "/shape"]))
    graph.node.append(
        helper.make_node(
            "ConstantOfShape",
            [seed + "/shape"],
            [seed],
            value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1]),
        )
    )
    try:
        backward = differentiate(probe, list(names), contract.SCORES, seed, prefix="token_default")
    except GradientError as exc:
        _refuse(list(names), f"no backward pass to choose by ({exc})")
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(backward.grads[n]) for n in names)
    try:
        session = large_protos.session(probe)
        grads = session.run(None, {contract.INPUT: random_input(model, size)})
    except Exception as exc:  # a verdict in one line, never a traceback
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        _refuse(list(names), f"its backward pass did not run ({first[:160]})")
    return [n for n, g in zip(names, grads, strict=True) if np.abs(g[:, layouts[n].prefix :]).max() > 0]


def random_input(model: onnx.ModelProto, size: tuple[int, int]) -> np.ndarray:
    """One random image in the model input's own layout and type (float: N(0, 1); uint8: 0–255)."""
    found = read_onnx_input(model, input_size=None)
    batch = declared_batch(model) or 1
    shape = (batch, found.channels, *size) if found.layout == "NCHW" else (batch, *size, found.channels)
    rng = np.random.default_rng(0)
    if found.dtype == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def _refuse(candidates: Sequence[str], why: str) -> NoReturn:
    shown = " ".join(f"--layer {name}" for name in candidates[-SHOWN:])
    raise LayerError("<default>", [], f"no default layer for this token model: {why}; name one, e.g. {shown}")
