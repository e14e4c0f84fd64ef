"""Float64 copies of ONNX graphs, evaluated with ``onnx.reference`` (pure numpy) for exact checks."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_resize import Resize as ReferenceResize

from onnxcam import contract

from .errors import ExportError
from .gating import reads
from .large_protos import without_initializers
from .memory import release_for

#: Raised to float64: float32 and the reduced-precision types of deployed graphs (float16 inside and out).
_LOWER = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _retype(tp: onnx.TypeProto) -> None:
    if tp.tensor_type.elem_type in _LOWER:
        tp.tensor_type.elem_type = TensorProto.DOUBLE


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` where every float32/float16 tensor, constant, cast target and tensor attribute is float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph_to_float64(m.graph)
    return m


def _graph_to_float64(g: onnx.GraphProto) -> None:
    """:func:`to_float64` in place on one graph and its subgraphs (``If`` branches)."""
    for t in g.initializer:
        if t.data_type in _LOWER:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        _retype(vi.type)
    for node in g.node:
        _typed_constants(node)
        for attr in node.attribute:
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in _LOWER:
                attr.i = TensorProto.DOUBLE
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _LOWER:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                _graph_to_float64(sub)


def _typed_constants(node: onnx.NodeProto) -> None:
    """Float32 values a node makes from attributes the tensor pass misses: ``ConstantOfShape`` without ``value``
    (float32 zeros by the spec) and ``Constant`` with ``value_float(s)`` become float64 ``value`` tensors."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "ConstantOfShape" and "value" not in attrs and node.domain in ("", "ai.onnx"):
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float64))))
    if node.op_type == "Constant" and ({"value_float", "value_floats"} & attrs.keys()):
        attr = attrs.get("value_float") or attrs["value_floats"]
        value = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float64)
        node.attribute.remove(attr)
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))


class CouldNotVerify(ExportError):
    """The float64 check cannot be run on this graph (an op the reference cannot evaluate, an unresolvable step)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"could not verify ({reason}); written unverified only with --no-verify")


@functools.lru_cache(maxsize=256)
def _resize_matrix(attrs: tuple, size: int, scale: float | None, out: int | None) -> np.ndarray:
    from .autodiff.rules.resize import resize_matrix

    return resize_matrix(dict(attrs), size, scale, out, (0.0, 1.0))


class Resize(ReferenceResize):
    """``Resize`` as onnxruntime computes it (the forward the file runs), in float64: one interpolation matrix per
    resized axis from :func:`~.autodiff.rules.resize.resize_matrix` (the Resize rule's own). ``onnx.reference``
    differs where a nearest source coordinate lies one ulp from an integer (7 → 17 pixels); ``tf_crop_and_resize`` and
    the keep-aspect-ratio policies still go to it."""

    def _run(self, x, roi=None, scales=None, sizes=None, **attrs):  # type: ignore[override]
        node = {a.name: onnx.helper.get_attribute_value(a) for a in self.onnx_node.attribute}
        policy = node.get("keep_aspect_ratio_policy", "stretch")
        if node.get("coordinate_transformation_mode") == "tf_crop_and_resize" or policy != "stretch":
            return super()._run(x, roi, scales, sizes, **attrs)
        axes = [int(a) % x.ndim for a in node.get("axes", range(x.ndim))]
        targets = list(sizes) if sizes is not None and len(sizes) else list(scales)
        y = x
        for axis, target in zip(axes, targets, strict=True):
            size = x.shape[axis]
            by_size = sizes is not None and len(sizes)
            if (by_size and int(target) == size) or (not by_size and float(target) == 1.0):
                continue
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(node.items()))
            matrix = _resize_matrix(key, size, None if by_size else float(target), int(target) if by_size else None)
            y = np.moveaxis(np.tensordot(matrix, np.moveaxis(y, axis, 0), axes=1), 0, axis)
        return (y.astype(x.dtype),)


class Pad(OpRun):
    """Constant-mode ``Pad`` that accepts negative pads (= cropping) as the spec and onnxruntime do; the reference's
    own ``Pad`` hands negative widths to ``numpy.pad``, which refuses them (the Conv rule crops this way)."""

    op_domain = ""

    def _run(self, data, pads, constant_value=None, axes=None, mode=None):  # type: ignore[override]
        if (mode or "constant") != "constant":
            raise NotImplementedError(f"Pad mode {mode}")
        rank = data.ndim
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        pads = [int(p) for p in pads]
        begin = dict(zip(axes, pads[: len(axes)], strict=True))
        end = dict(zip(axes, pads[len(axes) :], strict=True))
        crop = tuple(slice(max(-begin.get(a, 0), 0), data.shape[a] - max(-end.get(a, 0), 0)) for a in range(rank))
        widths = [(max(begin.get(a, 0), 0), max(end.get(a, 0), 0)) for a in range(rank)]
        value = 0 if constant_value is None else constant_value.item()
        return (np.pad(data[crop], widths, constant_values=value).astype(data.dtype),)


class Erf(OpRun):
    """``Erf`` in the input's precision (``math.erf``, double): the reference's own rounds every value to float32
    (``numpy.vectorize(erf, otypes=["f"])``), which makes a GELU network's float64 function step at 1e-8 and its finite
    differences settle at no step (ViT)."""

    op_domain = ""

    def _run(self, x):  # type: ignore[override]
        return (_erf(x),)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


class Gelu(OpRun):
    """``Gelu`` (opset 20) in the input's precision: ``x·(1 + erf(x/√2))/2``, or with ``approximate='tanh'``
    ``x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2`` (the spec's formulas); the reference runs the op's function body,
    whose ``Erf`` rounds to float32 (see :class:`Erf`)."""

    op_domain = ""

    def _run(self, x, approximate=None):  # type: ignore[override]
        if (approximate or "none") == "tanh":
            inner = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
        else:
            inner = _erf(x / np.sqrt(2.0))
        return ((0.5 * x * (1 + inner)).astype(x.dtype),)


class GatherElements(OpRun):
    """``GatherElements`` by ``numpy.take_along_axis``: the reference's own uses ``numpy.choose``, which refuses axes
    longer than 64 (the GatherElements, GridSample and ScatterElements rules gather along whole feature maps)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):  # type: ignore[override]
        axis = int(axis or 0) % data.ndim
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


class GlobalLpPool(OpRun):
    """``GlobalLpPool``: ``y = (Σ_spatial |x|^p)^(1/p)`` per channel, spatial axes kept as 1 (``onnx.reference`` has
    no kernel for it)."""

    op_domain = ""

    def _run(self, x, p=None):  # type: ignore[override]
        axes = tuple(range(2, x.ndim))
        p = 2 if p is None else int(p)
        return ((np.abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p),)


def cut_after(
    model: onnx.ModelProto, tensor: str, keep: Sequence[str] | None = None, fed: Sequence[str] = ()
) -> tuple[onnx.ModelProto, list[str]]:
    """The nodes of ``model`` that depend on ``tensor`` (and lead to an output in ``keep``, default all), as a model
    whose inputs are ``tensor`` and the ``frozen`` tensors those nodes read from elsewhere (skip connections, graph
    inputs …), returned second. ``fed``: inputs with a default (e.g. ``unit_seed``) that stay inputs (frozen)."""
    downstream = {tensor}
    nodes = []
    for node in model.graph.node:
        if any(i in downstream for i in reads(node)):
            nodes.append(node)
            downstream.update(node.output)
    outputs = [o for o in model.graph.output if o.name in downstream and (keep is None or o.name in keep)]
    needed = {o.name for o in outputs}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(reads(node))
    nodes = kept[::-1]
    weights = {t.name: t for t in model.graph.initializer if t.name not in fed}
    read = {i for n in nodes for i in reads(n) if i}
    frozen = sorted(read - downstream - weights.keys())
    graph = onnx.helper.make_graph(
        nodes,
        "after_" + tensor,
        [onnx.helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in [tensor, *frozen]],
        outputs,
        initializer=[weights[name] for name in sorted(read & weights.keys())],
    )
    cut = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return cut, frozen


def switched_on(model: onnx.ModelProto, also: Sequence[str] = ()) -> onnx.ModelProto:
    """Copy of ``model`` whose gradient switches (``compute:gradients``, ``compute:gradient:input…``) and the
    switches ``also`` default to true. Head graphs stay off: they compute scores, not gradients, and are checked
    against the forward instead."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        gradient = t.name.startswith(contract.switch_name(contract.GRADIENT_PREFIX))
        if gradient or t.name == contract.GRADIENTS_SWITCH or t.name in also:
            t.CopyFrom(numpy_helper.from_array(np.array(True), t.name))
    return m


class Float64Evaluator:
    """``feeds → outputs of model`` (gradient switches on) in float64 by the ONNX reference implementation
    (:func:`float64_evaluator`); ``names`` picks other tensors of the graph (any intermediate) instead of the outputs.
    ``weights``: its float64 initializers ``{name: array}``, which another evaluator over part of the same graph
    (:func:`cut_after`) can share instead of converting them again.

    Memory: a call runs only the nodes ``names`` need and drops each intermediate after its last reader
    (:func:`_run_freeing`), and the switched parts (``If`` on a constant switch, the backward passes) are inlined
    (:func:`inline_constant_ifs`) so that this holds inside them too: ``onnx.reference``'s own ``run`` keeps every
    intermediate of the call, which for a forward and backward pass of ViT-H/14 in float64 is ~10 GB per image."""

    def __init__(self, model: onnx.ModelProto, new_ops: list | None, shared: Mapping[str, np.ndarray]) -> None:
        skeleton, self.weights = _weights_as_inputs(model, shared)
        self.model = to_float64(switched_on(skeleton))
        self.constant = inline_constant_ifs(self.model.graph)
        self.ops = [Pad, GatherElements, GlobalLpPool, Resize, Erf, Gelu, *(new_ops or [])]
        self.evaluator: ReferenceEvaluator | None = None
        self.plans: dict[tuple[str, ...], Schedule] = {}

    def __call__(self, feeds: dict[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(names or [o.name for o in self.model.graph.output])
        if self.constant.keys() & feeds.keys():
            raise ValueError(f"switches {sorted(self.constant.keys() & feeds.keys())} are fixed in a float64 evaluator")
        feeds = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
        try:
            if self.evaluator is None:
                self.evaluator = ReferenceEvaluator(self.model, new_ops=self.ops)
            if tuple(names) not in self.plans:
                self.plans[tuple(names)] = schedule(self.evaluator.rt_nodes_, names)
            return _run_freeing(self.evaluator, self.plans[tuple(names)], names, {**self.weights, **feeds})
        except Exception as exc:  # any failure of the reference evaluator is a verdict, never a traceback
            lines = str(exc).strip().splitlines()
            where = next((line.strip() for line in lines if "node" in line.lower()), "")
            reason = f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"
            raise CouldNotVerify(f"float64 evaluation failed, {reason}{f' ({where[:120]})' if where else ''}") from None


def inline_constant_ifs(graph: onnx.GraphProto) -> dict[str, bool]:
    """In place: every ``If`` whose condition is a constant (a scalar boolean initializer, or an ``And`` of such)
    becomes the nodes of the branch it takes (an ``If`` in there too), its outputs ``Identity`` copies of the
    branch's. Returns the constant conditions that are graph inputs ``{name: value}`` (the gradient switches of
    :mod:`.gating`).

    A branch defining a name that is defined anywhere else in the model stays in its ``If``: sibling subgraphs may
    reuse names (valid ONNX), and at the top level one would overwrite the other or, as ``onnx.reference`` feeds a
    subgraph the enclosing values over its own initializers, replace a constant of another subgraph."""
    constant = _boolean_scalars(graph.initializer)
    defined = _definitions(graph)
    pending = list(reversed(graph.node))
    nodes: list[onnx.NodeProto] = []
    while pending:
        node = pending.pop()
        if node.op_type == "And" and all(i in constant for i in node.input):
            constant[node.output[0]] = all(constant[i] for i in node.input)
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or node.input[0] not in constant:
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        branch = branches["then_branch" if constant[node.input[0]] else "else_branch"]
        inside = _definitions(branches["then_branch"]) + _definitions(branches["else_branch"])
        own = [*(t.name for t in branch.initializer), *(o for n in branch.node for o in n.output if o)]
        if any(defined[name] > inside[name] for name in own):
            nodes.append(node)
            continue
        graph.initializer.extend(branch.initializer)
        constant.update(_boolean_scalars(branch.initializer))
        identities = [
            onnx.helper.make_node("Identity", [inner.name], [outer])
            for inner, outer in zip(branch.output, node.output, strict=True)
        ]
        pending.extend(reversed([*branch.node, *identities]))
    del graph.node[:]
    graph.node.extend(nodes)
    return {k: v for k, v in constant.items() if any(i.name == k for i in graph.input)}


def _boolean_scalars(tensors: Sequence[onnx.TensorProto]) -> dict[str, bool]:
    return {t.name: bool(numpy_helper.to_array(t)) for t in tensors if t.data_type == TensorProto.BOOL and not t.dims}


def _definitions(graph: onnx.GraphProto) -> Counter[str]:
    """How often each name is defined (graph input, initializer, node output) in ``graph`` and its subgraphs."""
    names = Counter([*(i.name for i in graph.input), *(t.name for t in graph.initializer)])
    for node in graph.node:
        names.update(o for o in node.output if o)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names.update(_definitions(sub))
    return names


Schedule = list[tuple[OpRun, tuple[str, ...]]]


def schedule(nodes: Sequence[OpRun], names: Sequence[str]) -> Schedule:
    """The nodes (of ``ReferenceEvaluator.rt_nodes_``) that ``names`` depend on, in order, each with the tensors to
    drop after it: those it is the last reader of, unless wanted."""
    wanted = set(names)
    needed = set(wanted)
    kept = []
    for node in reversed(nodes):
        if needed.intersection(node.onnx_node.output):
            kept.append(node)
            needed.update(reads(node.onnx_node))
    kept.reverse()
    last = {t: i for i, node in enumerate(kept) for t in reads(node.onnx_node)}
    return [
        (node, tuple(t for t in dict.fromkeys(reads(node.onnx_node)) if last[t] == i and t not in wanted))
        for i, node in enumerate(kept)
    ]


def _run_freeing(
    evaluator: ReferenceEvaluator, plan: Schedule, names: Sequence[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``evaluator.run(names, feeds)`` along ``plan`` (:func:`schedule`): only the nodes ``names`` need, each
    intermediate dropped after its last reader (``ReferenceEvaluator.run`` runs every node and keeps every result)."""
    results = {"": None, **evaluator.rt_inits_, **feeds}
    for node, drop in plan:
        inputs = [results[t] for t in node.input]
        outputs = node.run(*inputs, context=results) if node.need_context() else node.run(*inputs)
        results.update(zip(node.output, outputs, strict=False))
        for t in drop:
            results.pop(t, None)
    return {name: results[name] for name in names}


def float64_evaluator(
    model: onnx.ModelProto, new_ops: list | None = None, shared: Mapping[str, np.ndarray] | None = None
) -> Float64Evaluator:
    """A :class:`Float64Evaluator` of ``model``. The model is converted once: callers that evaluate it many times
    (finite differences, the kink check) keep one float64 copy of the weights instead of one per call.

    Memory: the float weights are converted tensor by tensor straight from ``model`` (or taken from ``shared``, an
    evaluator's ``weights`` over the same graph) and fed to the reference as graph inputs (:func:`_weights_as_inputs`):
    the one copy made is the float64 one (2× the float32 weights), not a float32 copy of the proto, its float64 proto
    and the reference's arrays (5×: 2.5 GB for WRN-101-2 at 127 M parameters).

    Calls raise :class:`CouldNotVerify` (one line: the op, the node and the reason) when the reference cannot run it.
    """
    release_for(model)  # earlier evaluators sit in reference cycles (op ↔ evaluator) holding float64 weights
    return Float64Evaluator(model, new_ops, shared or {})


def _weights_as_inputs(
    model: onnx.ModelProto, shared: Mapping[str, np.ndarray]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``model`` without its float initializers, which become graph inputs (so a feed with the same name still
    overrides a default), and those initializers as float64 arrays ``{name: array}`` (from ``shared`` where it has
    them). The copy leaves the initializer field out instead of copying it whole: each tensor is converted alone."""
    skeleton = without_initializers(model)
    graph = skeleton.graph
    declared = {i.name for i in graph.input}
    weights = {}
    for t in model.graph.initializer:
        if t.data_type not in _LOWER:
            graph.initializer.append(t)
            continue
        weights[t.name] = shared[t.name] if t.name in shared else numpy_helper.to_array(t).astype(np.float64)
        weights[t.name].flags.writeable = False  # an op writing into its input fails instead of changing the weights
        if t.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, TensorProto.DOUBLE, list(t.dims)))
    return skeleton, weights


def evaluate_float64(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], new_ops: list | None = None
) -> dict[str, np.ndarray]:
    """All outputs of ``model`` (gradient switches on) computed in float64 once (:func:`float64_evaluator`)."""
    return float64_evaluator(model, new_ops)(feeds)
