"""PyTorch side of the export: tap named modules and trace the forward to ONNX with the taps as extra outputs."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import onnx
import torch
from torch import nn

from onnxcam import contract

from . import large_protos
from .errors import ExportError
from .layers import LayerError, nearest_names
from .torch_outputs import pick

EXPORTERS = ("torchscript", "dynamo")


def split_call(layer: str) -> tuple[str, int]:
    """``'name#k'`` → ``('name', k)``: the k-th call (from 1) of a module that runs more than once; ``'name'`` → 1."""
    name, _, call = layer.rpartition("#")
    return (name, int(call)) if name and call.isdigit() and int(call) > 0 else (layer, 1)


def check_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """The model's modules by name; a :class:`LayerError` with the nearest names for a layer that is not one."""
    modules = dict(model.named_modules())
    for layer in layers:
        if split_call(layer)[0] not in modules:
            raise LayerError(layer, nearest_names(layer, [n for n in modules if n]))
    return modules


class _Handed(torch.autograd.Function):
    """``x ↦ clone(x)`` that the TorchScript exporter writes as an ONNX ``Identity`` node (its ``clone`` writes none).

    Without that node the network reads the very tensor tapped, and TorchScript's ONNX peepholes fuse through it:
    a layer ending in ``permute`` read by a ``permute`` back (Segformer's stages) becomes one ``Transpose`` pair
    fused away, so the scores no longer read the tap and its gradient cannot be formed.
    """

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad

    @staticmethod
    def symbolic(g: torch.Graph, x: torch.Value) -> torch.Value:
        return g.op("Identity", x)


@contextlib.contextmanager
def tapped(model: nn.Module, layers: Sequence[str], node: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record the outputs of ``layers`` (module names; ``name#k`` = the k-th call of a module that runs more than
    once) during forward passes, in ``layers`` order.

    Each hook hands the network a clone of the output, so in-place ops downstream (``x += identity``,
    ``ReLU(inplace=True)``) never change the recorded feature map; ``node``: a clone the TorchScript exporter
    writes as an ``Identity`` node (:class:`_Handed`).
    """
    modules = check_layers(model, layers)
    captured: list[torch.Tensor] = []
    slots: dict[str, torch.Tensor] = {}

    def make_hook(layer: str):
        call = split_call(layer)[1]
        calls = 0

        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
            nonlocal calls
            calls += 1
            if calls != call:
                return None
            if not isinstance(output, torch.Tensor):
                raise LayerError(layer, [], f"layer '{layer}' returns {type(output).__name__}, not a tensor")
            slots[layer] = output
            return _Handed.apply(output) if node else output.clone()

        return hook

    handles = [modules[split_call(layer)[0]].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
    captured.extend(slots[layer] for layer in layers if layer in slots)


@dataclass
class Call:
    """One module call of a forward pass: its layer name (``name#k`` when the module runs more than once), the
    module, its output, the names of the enclosing modules returning the very same tensor (``layer4``,
    ``layer4.1``), and ``∂ y / ∂ output`` of the top-1 logits' sum ``y`` (``None``: no gradient reaches it);
    ``reads``: the names of the earlier calls whose very output tensor is one of its inputs."""

    name: str
    module: nn.Module
    output: torch.Tensor
    aliases: list[str] = field(default_factory=list)
    grad: torch.Tensor | None = None
    alias_modules: list[nn.Module] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[nn.Module]:
        """Every module returning this tensor, innermost first (an ``nn.Identity`` inside a BatchNorm wrapper, …)."""
        return [self.module, *self.alias_modules]


def module_calls(
    model: nn.Module, input_shape: tuple[int, int, int], batch: int = 2, scores_from: str | None = None
) -> list[Call]:
    """Every call of a named module returning a tensor in one eager forward of a seeded normal batch, in the
    order the calls finish; with the gradient of the top-1 logits' sum (the output, or its tensor named
    ``scores_from`` when the model returns several: :func:`.torch_outputs.pick`)."""
    records: list[tuple[str, nn.Module, torch.Tensor, int | None]] = []  # name, module, output, owner record
    clones: dict[int, tuple[int, torch.Tensor]] = {}  # id of a clone handed to the network → (record, clone)
    calls: dict[str, int] = {}
    reads: dict[int, list[int]] = {}  # record → the records whose clone it reads

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
            calls[name] = calls.get(name, 0) + 1
            if not isinstance(output, torch.Tensor):
                return None
            if id(output) in clones:  # an enclosing module returning a tensor already recorded
                records.append((name, module, output, clones[id(output)][0]))
                return None
            reads[len(records)] = [clones[id(t)][0] for t in inputs if id(t) in clones]
            records.append((name, module, output, None))
            clone = output.clone()
            clones[id(clone)] = (len(records) - 1, clone)
            return clone

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.enable_grad():
            scores = pick(model.eval()(x), scores_from)
    finally:
        for handle in handles:
            handle.remove()
    seen: dict[str, int] = {}
    out: list[Call] = []
    owners: dict[int, Call] = {}
    for index, (name, module, tensor, owner) in enumerate(records):
        seen[name] = seen.get(name, 0) + 1
        label = f"{name}#{seen[name]}" if calls[name] > 1 else name
        if owner is not None:
            owners[owner].aliases.append(label)
            owners[owner].alias_modules.append(module)
            continue
        owners[index] = Call(label, module, tensor, reads=[owners[r].name for r in reads[index] if r in owners])
        out.append(owners[index])
    if isinstance(scores, torch.Tensor) and scores.requires_grad:
        wanted = [c for c in out if c.output.requires_grad and c.output.is_floating_point()]
        top = scores.reshape(batch, -1).max(1).values.sum()
        grads = torch.autograd.grad(top, [c.output for c in wanted], allow_unused=True)
        for c, g in zip(wanted, grads, strict=True):
            c.grad = g
    return out


class _TappedForward(nn.Module):
    """``x ↦ (scores, A_1, …, A_L)``: the model's scores (its output, or the output called ``scores_from`` among
    several, :mod:`.torch_outputs`) followed by the tapped feature maps; ``node``: the network reads each tap through
    an ``Identity`` node in a TorchScript export (:class:`_Handed`)."""

    def __init__(
        self, model: nn.Module, layers: Sequence[str], scores_from: str | None = None, node: bool = False
    ) -> None:
        super().__init__()
        check_layers(model, layers)
        self.model = model
        self.layers = list(layers)
        self.scores_from = scores_from
        self.node = node

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with tapped(self.model, self.layers, self.node) as activations:
            scores = pick(self.model(x), self.scores_from)
        return (scores, *activations)


def forward_with_taps(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, scores_from: str | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eager forward returning the scores and the feature maps of ``layers`` (part of the autograd graph)."""
    scores, *activations = _TappedForward(model, layers, scores_from)(x)
    return scores, activations


def to_onnx(
    model: nn.Module,
    layers: Sequence[str],
    input_size: tuple[int, int],
    channels: int = 3,
    opset: int = 18,
    exporter: str = "dynamo",
    optimize: bool = True,
    scores_from: str | None = None,
) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) to an ONNX forward graph with outputs ``scores`` and ``activation:<layer>``.

    The batch dimension is dynamic; the example batch has 2 images so no exporter specialises it to 1.
    ``optimize=False`` keeps the graph as traced (no constant folding, BatchNorm not folded into Conv).
    ``scores_from``: the name of the scores among the model's outputs (:func:`.torch_outputs.scores_name`).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter '{exporter}', choose one of {', '.join(EXPORTERS)}")
    wrapper = _TappedForward(model.eval(), layers, scores_from, node=exporter == "torchscript").eval()
    example = torch.randn(2, channels, *input_size)
    output_names = [contract.SCORES, *(contract.activation_name(layer) for layer in layers)]
    try:
        graph = _export(wrapper, example, output_names, opset, exporter, optimize)
    except ExportError:
        raise
    except Exception as exc:  # the exporter's own refusals (unsupported op or size) are a one-line verdict
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        other = next(e for e in EXPORTERS if e != exporter)
        raise TracingError(
            f"the {exporter} exporter cannot export this model at {input_size[0]}x{input_size[1]}: {first[:300]}; "
            f"try --exporter {other} or another --input-size"
        ) from None
    _refuse_fixed_batch(graph, (channels, *input_size), exporter)
    return graph


def _refuse_fixed_batch(graph: onnx.ModelProto, input_shape: tuple[int, ...], exporter: str) -> None:
    """Raise :class:`TracingError` when the traced graph runs the example's batch of 2 but not one image: the model
    turned the batch size into a constant (``len(x)``, ``int(x.shape[0])``, a loop over the batch). A graph that
    onnxruntime cannot run at all is left to the later steps, which name their cause."""
    import numpy as np

    try:
        session = large_protos.session(graph, log_level=4)  # a failure is reported below, in one line
    except Exception:
        return
    try:
        session.run([contract.SCORES], {contract.INPUT: np.zeros((1, *input_shape), np.float32)})
    except Exception as exc:  # onnxruntime's refusals: a shape mismatch at some node, or a fixed input batch
        try:
            session.run([contract.SCORES], {contract.INPUT: np.zeros((2, *input_shape), np.float32)})
        except Exception:
            return
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise TracingError(
            f"the {exporter} exporter traced a graph that runs only at the example's batch of 2, not on one image "
            f"({first[:160]}): the model turns its batch size into a constant (len(x), int(x.shape[0]), a loop over "
            "the batch); use x.shape[0] (or -1 in reshape/expand) in forward"
        ) from None


class TracingError(ExportError):
    """``torch.onnx.export`` refused the model."""


def _export(
    wrapper: nn.Module, example: torch.Tensor, output_names: list[str], opset: int, exporter: str, optimize: bool
) -> onnx.ModelProto:
    """``torch.onnx.export`` of ``wrapper`` with a dynamic batch ``N`` (see :func:`to_onnx`). TorchScript writes to a
    file in a temporary folder: over 2 GiB it stores the weights as external data beside it, ``onnx.load`` reads
    them back (a file object would refuse such a model)."""
    # TorchScript traces with gradients on: under no_grad, eval-mode MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which that exporter cannot write (torchvision's ViT)
    grad = torch.no_grad() if exporter == "dynamo" else contextlib.nullcontext()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), grad:
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[contract.INPUT],
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("N")},),
                optimize=optimize,
                verbose=False,
            )
            return program.model_proto
        with tempfile.TemporaryDirectory(prefix="onnxcam-trace-") as folder:
            path = os.path.join(folder, "forward.onnx")
            torch.onnx.export(
                wrapper,
                (example,),
                path,
                input_names=[contract.INPUT],
                output_names=output_names,
                opset_version=opset,
                dynamo=False,
                dynamic_axes={name: {0: "N"} for name in [contract.INPUT, *output_names]},
                do_constant_folding=optimize,
            )
            return onnx.load(path)
