"""What a gradient rule sees: one forward node, its output gradients, and a way to emit new ONNX nodes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ExportError
from .graph_info import Dim, GraphInfo


class GradientError(ExportError):
    """The backward graph cannot be built (unsupported op, unknown shape, …)."""


class Emitter:
    """Appends uniquely named nodes and initializers to a graph under construction."""

    def __init__(self, taken: set[str], prefix: str = "grad") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken
        self._prefix = prefix
        self._counter = 0
        self.scope = "seed"

    def fresh(self, hint: str) -> str:
        """A tensor/node name not used anywhere in the graph."""
        while True:
            self._counter += 1
            name = f"{self._prefix}/{self.scope}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs: object) -> list[str]:
        """Emit ``op_type(inputs)`` and return its output names (``""`` inputs mean "omitted")."""
        outputs = [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type), **attrs))
        return outputs

    def const(self, value: np.ndarray | float | int | Sequence[int], dtype: np.dtype | type | None = None) -> str:
        """An initializer holding ``value`` (``dtype`` defaults to float32 for floats, int64 for ints)."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name


class VJPContext:
    """The interface a rule uses for one forward ``node``.

    ``grad(i)`` is the upstream gradient ``ḡ`` of output ``i``; ``needs(i)`` tells whether input ``i`` lies on a
    differentiated path (a rule returns ``None`` for the others). ``emit``/``const`` add backward nodes.
    """

    def __init__(
        self,
        node: onnx.NodeProto,
        output_grads: Sequence[str | None],
        needs: Sequence[bool],
        info: GraphInfo,
        emitter: Emitter,
    ) -> None:
        self.node = node
        self._output_grads = list(output_grads)
        self._needs = list(needs)
        self.info = info
        self._emitter = emitter
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # -- the forward node -------------------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    def input(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def output(self, i: int = 0) -> str:
        return self.node.output[i]

    def attr(self, name: str, default: object = None) -> object:
        """Attribute value (bytes are decoded to ``str``)."""
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def needs(self, i: int) -> bool:
        return i < len(self._needs) and self._needs[i]

    # -- static facts -----------------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...]:
        shape = self.info.shape(name)
        if shape is None:
            self.fail(f"the shape of '{name}' is unknown")
        return shape

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def dtype(self, name: str) -> np.dtype:
        return self.info.dtype(name)

    def constant(self, i: int) -> np.ndarray:
        """Value of input ``i``, which must be a constant (initializer or ``Constant`` node)."""
        value = self.info.constant(self.input(i))
        if value is None:
            self.fail(f"input {i} ('{self.input(i)}') must be a constant")
        return value

    def optional_constant(self, i: int) -> np.ndarray | None:
        name = self.input(i)
        return self.info.constant(name) if name else None

    # -- gradients --------------------------------------------------------------------------------------------------
    def grad(self, i: int = 0) -> str:
        """``ḡ`` of output ``i``; zeros shaped like the output when nothing flows back through it."""
        g = self._output_grads[i] if i < len(self._output_grads) else None
        if g is None:
            g = self.zeros_like(self.output(i))
        return g

    def has_grad(self, i: int) -> bool:
        return i < len(self._output_grads) and self._output_grads[i] is not None

    # -- emitting ---------------------------------------------------------------------------------------------------
    def emit(self, op_type: str, *inputs: str, **attrs: object) -> str:
        """Emit a single-output node and return its output name."""
        return self._emitter.op(op_type, inputs, 1, **attrs)[0]

    def emit_multi(self, op_type: str, inputs: Sequence[str], n_outputs: int, **attrs: object) -> list[str]:
        return self._emitter.op(op_type, inputs, n_outputs, **attrs)

    @property
    def float_type(self) -> np.dtype:
        """The node's floating-point element type (its first float output or input; float32 when none): the type of
        the float constants a rule emits, so float16 graphs get float16 backward nodes."""
        for name in [*self.outputs, *self.inputs]:
            if name and (dtype := self.dtype(name)).kind == "f":
                return dtype
        return np.dtype(np.float32)

    def const(self, value: np.ndarray | float | int | Sequence[int], like: str | None = None) -> str:
        """A constant; with ``like`` it takes that tensor's element type (float constants otherwise
        :attr:`float_type`, integers int64). A ``like`` the forward graph does not hold (a gradient: its type is
        not inferred) takes :attr:`float_type`, the type gradients flow in at this node."""
        if like:
            return self._emitter.const(value, self.dtype(like) if self.info.knows(like) else self.float_type)
        return self._emitter.const(value, self.float_type if np.asarray(value).dtype.kind == "f" else None)

    def shape_of(self, name: str) -> str:
        """Runtime shape of ``name`` as an int64 tensor."""
        return self.emit("Shape", name)

    def zeros_like(self, name: str) -> str:
        return self.emit("Mul", name, self.const(0.0, like=name))

    def scatter_add(self, op_type: str, data: str, indices: str, updates: str, **attrs: object) -> str:
        """``op_type`` (``ScatterElements``/``ScatterND``) with ``reduction='add'``; in float32 when the node's float
        type (:attr:`float_type`) is float16/bfloat16 (onnxruntime's CPU kernels have no reduced-precision ``add``),
        cast back to that type."""
        dtype = self.float_type
        if dtype.itemsize >= 4:
            return self.emit(op_type, data, indices, updates, reduction="add", **attrs)
        wide = [self.emit("Cast", t, to=onnx.TensorProto.FLOAT) for t in (data, updates)]
        summed = self.emit(op_type, wide[0], indices, wide[1], reduction="add", **attrs)
        return self.emit("Cast", summed, to=helper.np_dtype_to_tensor_dtype(dtype))

    def unbroadcast(self, grad: str, input_name: str, output_name: str) -> str:
        """Sum ``grad`` (shaped like the broadcast ``output_name``) down to the shape of ``input_name``.

        ``x̄ = Σ_{broadcast axes} ḡ``, reshaped to ``x``'s shape. The broadcast axes come from static shapes, or are
        found at run time where an input dim is unknown or a symbol the output does not share.
        """
        in_shape = self.shape(input_name)
        out_shape = self.shape(output_name)
        lead = len(out_shape) - len(in_shape)
        if None in out_shape or any(
            d is None or (isinstance(d, str) and d != o) for d, o in zip(in_shape, out_shape[lead:], strict=True)
        ):  # a dim shape inference could not tell (None, or its own ``unk__`` symbol): decide at run time
            return self._unbroadcast_at_run_time(grad, input_name, lead)
        if in_shape == out_shape:
            return grad
        # By ONNX broadcasting, an input dim other than 1 equals the output dim; symbolic dims count as non-1.
        axes = list(range(lead)) + [lead + k for k, d in enumerate(in_shape) if d == 1 and out_shape[lead + k] != 1]
        if axes:
            grad = self.emit("ReduceSum", grad, self.const(axes), keepdims=1)
        if lead or axes:
            grad = self.emit("Reshape", grad, self.shape_of(input_name))
        return grad

    def _unbroadcast_at_run_time(self, grad: str, input_name: str, lead: int) -> str:
        """:meth:`unbroadcast` with the broadcast axes found at run time: the ``lead`` leading axes, then every axis
        where ``input_name`` has 1 and ``grad`` does not (``ReduceSum`` with computed axes), reshaped to the input."""
        if lead:
            grad = self.emit("ReduceSum", grad, self.const(list(range(lead))), keepdims=0)
        target = self.shape_of(input_name)
        one = self.const(np.array(1, np.int64))
        wanted = self.emit(
            "And", self.emit("Equal", target, one), self.emit("Not", self.emit("Equal", self.shape_of(grad), one))
        )
        axes = self.emit("Reshape", self.emit("NonZero", wanted), self.const(np.array([-1], np.int64)))
        summed = self.emit("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.emit("Reshape", summed, target)

    def fail(self, message: str) -> None:
        raise GradientError(f"{self.node.op_type} node '{self.node.name or self.node.output[0]}': {message}")
