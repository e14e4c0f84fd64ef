"""Verification of an explainer graph exported from PyTorch: its gradients vs ``torch.autograd``."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from onnxcam import contract

from .float64 import CouldNotVerify, Float64Evaluator, cut_after, float64_evaluator
from .float64_torch import OPS
from .layouts import to_nchw_torch
from .torch_capture import forward_with_taps
from .torch_outputs import PreActivation, last_call, pick
from .verify import (
    CLASS_PATH,
    Objective,
    Report,
    check,
    objectives,
    refuse_non_finite,
    relative_error,
    settled_slopes,
)


class _ReluBackward(torch.autograd.Function):
    """``relu`` whose backward follows a modified rule: guided ``ḡ·[x>0]·[ḡ>0]`` or deconvnet ``ḡ·[ḡ>0]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        keep = grad > 0
        if ctx.guided:
            keep = keep & (x > 0)
        return grad * keep, None


class _ReluRule(TorchFunctionMode):
    """Every ``relu`` call (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not) with a modified backward."""

    _RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.guided = rule == "guided"

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self._RELUS:
            return _ReluBackward.apply(args[0], self.guided)
        return func(*args, **(kwargs or {}))


def _objective(scores: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_n scores[n, c_n]`` (summed over positions for a dense output) and the classes ``c`` used."""
    dense = scores.dim() == 4 and scores.shape[2:] != (1, 1)
    scores = scores if dense else scores.reshape(scores.shape[0], -1)
    per_class = scores.sum((2, 3)) if dense else scores
    used = torch.where(torch.as_tensor(target) < 0, per_class.argmax(1), torch.as_tensor(target))
    return per_class.gather(1, used[:, None]).sum(), used


def _seeded(t: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``Σ_n Σ rows_n ⊙ t_n`` of ``t`` ``[N, …]`` and seed rows holding as many entries per image."""
    return (t.reshape(len(t), -1) * torch.as_tensor(rows, dtype=t.dtype).reshape(len(t), -1)).sum()


def torch_reference(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    target: np.ndarray,
    rules: Sequence[str] = (),
    scores_from: str | None = None,
    skipped: str | None = None,
    layouts: Mapping[str, contract.Layout] | None = None,
    unit: tuple[str, np.ndarray] | None = None,
    seed: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Scores, target used, activations, ``∂ y / ∂ A`` and the input gradients (one per ReLU backward rule in
    ``rules``) from PyTorch autograd, named as the contract; ``y = Σ_n scores[n, c_n]``.

    ``scores_from``: the scores' name among the model's outputs; ``skipped``: the trailing op (``Softmax``,
    ``LogSoftmax``, ``Sigmoid``) the graph left out: its last call returns its input, moved by the ops after it as
    the graph's scores are (:mod:`.scores_head`).
    ``A`` and ``∂ y / ∂ A`` of a layer with a non-NCHW ``layouts`` entry are laid out as ``[N, C, h, w]`` after
    autograd. ``unit``: ``(layer, unit_seed [N, *U])``: ``y = Σ_n unit_seed_n ⊙ U_n`` of the layer's output ``U``
    instead (target used −1, ``activation:<layer>`` included); a layer after it gets a zero gradient. ``seed``
    ``[N, *S]``: ``y = Σ_n seed_n ⊙ scores_n`` instead (the seed path, target used −1)."""
    x = x.detach().requires_grad_(bool(rules))
    taps = [*layers, *([unit[0]] if unit and unit[0] not in layers else [])]

    def nchw(a: torch.Tensor, layer: str) -> torch.Tensor:
        return to_nchw_torch(a, (layouts or {}).get(layer, contract.Layout()))

    last = last_call(lambda: forward_with_taps(model.eval(), taps, x, scores_from), skipped) if skipped else None

    def forward() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        with PreActivation(skipped or "", last):
            scores, activations = forward_with_taps(model.eval(), taps, x, scores_from)
        top1 = torch.full((len(x),), contract.TOP1)
        if unit is not None:
            y, used = _seeded(nchw(activations[taps.index(unit[0])], unit[0]), unit[1]), top1
        elif seed is not None:
            y, used = _seeded(scores, seed), top1
        else:
            y, used = _objective(scores, target)
        return scores, y, activations, used

    scores, picked, activations, used = forward()
    wrt = [*activations[: len(layers)], *([x] if "standard" in rules else [])]
    grads = torch.autograd.grad(picked, wrt, allow_unused=True, materialize_grads=True)
    ref = {
        contract.SCORES: scores.detach().reshape(len(x), *_score_dims(scores)).numpy(),
        contract.TARGET_USED: used.numpy(),
    }
    for layer, a, g in zip(layers, activations[: len(layers)], grads[: len(layers)], strict=True):
        ref[contract.activation_name(layer)] = nchw(a.detach(), layer).numpy()
        ref[contract.gradient_name(layer)] = nchw(g, layer).numpy()
    if unit is not None:
        ref[contract.activation_name(unit[0])] = nchw(activations[taps.index(unit[0])].detach(), unit[0]).numpy()
    if "standard" in rules:
        ref[contract.input_gradient_name("standard")] = grads[-1].numpy()
    for rule in rules:
        if rule != "standard":
            with _ReluRule(rule):
                _, modified, _, _ = forward()
            ref[contract.input_gradient_name(rule)] = torch.autograd.grad(modified, x)[0].numpy()
    return ref


def _score_dims(scores: torch.Tensor) -> tuple[int, ...]:
    """``S`` of the contract: ``(K,)``, or ``(K, H, W)`` for a dense output."""
    return tuple(scores.shape[1:]) if scores.dim() == 4 and scores.shape[2:] != (1, 1) else (scores[0].numel(),)


def _source_of(output: str) -> tuple[str, str] | None:
    """The tensor a gradient output differentiates and its ReLU rule; ``None`` for scores and activations."""
    if output.startswith(contract.INPUT_GRADIENT):
        return contract.INPUT, output.partition(contract.INPUT_GRADIENT + ":")[2] or "standard"
    if output.startswith(contract.GRADIENT_PREFIX):
        return contract.ACTIVATION_PREFIX + output[len(contract.GRADIENT_PREFIX) :], "standard"
    return None


def at_a_kink(
    explainer: onnx.ModelProto,
    evaluate: Float64Evaluator,
    output: str,
    ours: np.ndarray,
    ref: np.ndarray,
    feeds: dict[str, np.ndarray],
    objective: Objective = CLASS_PATH,
) -> bool | None:
    """Which side the graph's own function takes where one image's gradient ``ours`` differs from autograd's ``ref``.

    ``v = ours − ref`` (scaled to the tapped tensor); the graph's float64 forward is differentiated along ``v`` by
    :func:`~.verify.settled_slopes`. The two candidates ``⟨ours, v⟩`` and ``⟨ref, v⟩`` are ``Σ (ours − ref)² / max``
    apart, so the step only has to resolve a gap of that size. True: the slope is ``⟨ours, v⟩`` (the graph is the
    gradient of its own function; PyTorch's float64 model, whose weights differ in rounding (e.g. a folded BatchNorm),
    lies across a kink from it: a ReLU input or a max-pool near-tie within ~1e-7). False: the slope is ``⟨ref, v⟩``
    (the graph is wrong). None: neither (unsettled). ``objective``: the differentiated quantity (class or unit path).
    ``evaluate``: the explainer's :class:`~.float64.Float64Evaluator` (its float64 weights are shared, not copied).
    """
    tap = _source_of(output)[0]  # type: ignore[index]
    after, frozen = cut_after(explainer, tap, objective.reads, objective.fed)
    wanted = [tap, *(f for f in frozen if f not in feeds), *objective.reads]
    values = {**evaluate(feeds, list(dict.fromkeys(wanted))), **feeds}
    at = values[tap]
    fixed = {f: values[f] for f in frozen}
    difference = ours - ref
    v = difference / np.abs(difference).max() * max(float(np.abs(at).max()), 1e-30)
    a, b = float((ours * v).sum()), float((ref * v).sum())
    gap = abs(a - b)

    run_after = float64_evaluator(after, OPS, evaluate.weights)

    def along(t: np.ndarray) -> np.ndarray:
        return objective(run_after({tap: at + t[0] * v[None], **fixed}), values, feeds)

    slope = settled_slopes(along, along(np.zeros(1)), np.array([gap]), 1 / 8)[0]
    if abs(slope - a) <= gap / 4:
        return True
    if abs(slope - b) <= gap / 4:
        return False
    return None


def _refuse_model_non_finite(
    ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], gradients: Sequence[str], objective: Objective
) -> None:
    """:class:`~.verify.NonFiniteGradient` when a gradient of the graph is NaN or infinite for an image exactly where
    autograd's is (the model's derivative, not a rule: a NaN or infinity autograd lacks is a wrong graph, left to
    the comparison)."""
    for name in gradients:
        images = len(ref[name])
        bad = ~np.isfinite(ours[name].reshape(images, -1))
        same = [n for n in range(images) if bad[n].any() and relative_error(ours[name][n], ref[name][n]) < np.inf]
        if same:
            scores = ~np.isfinite(ref[contract.SCORES][same]).all()
            cause = "their scores are NaN or infinite too" if scores else "torch.autograd's gradient too"
            raise refuse_non_finite(name + objective.suffix, len(same), images, cause)


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode (``model`` untouched). Its floating parameters and buffers are made in
    float64 directly (``deepcopy``'s memo), not copied in float32 and then converted: the peak is the float64 copy
    alone (2× the float32 weights), not 3×. Tied weights stay tied."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and id(t) not in memo:
            wide = t.detach().double()
            memo[id(t)] = nn.Parameter(wide, t.requires_grad) if isinstance(t, nn.Parameter) else wide
    return copy.deepcopy(model, memo).eval().double()


def shared_weights(explainer: onnx.ModelProto, model64: nn.Module) -> dict[str, np.ndarray]:
    """Float64 views of ``model64``'s parameters for the graph initializers that hold exactly the same values, as
    stored or transposed (a ``Linear`` weight exported as a ``MatMul`` operand): the graph's float64 evaluator reads
    PyTorch's float64 copy instead of making a second one (5 GB less on ViT-H/14). Initializers the exporter changed
    (a BatchNorm folded into a Conv) match nothing and are converted as before. Buffers are not shared: a forward in
    eval mode may update one in place (quantization observers, caches), and a view would carry that into the graph's
    constants (one equal to it by chance too)."""

    def key(a: np.ndarray) -> tuple:
        return a.shape, float(a.flat[0]), float(a.flat[a.size // 2]), float(a.flat[-1])

    candidates: dict[tuple, list[np.ndarray]] = {}
    for t in model64.parameters():  # each once (tied weights too)
        if t.dtype == torch.float64 and t.numel():
            a = t.detach().numpy()
            for view in (a, a.T) if a.ndim == 2 else (a,):
                candidates.setdefault(key(view), []).append(view)
    shared = {}
    for init in explainer.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and all(init.dims):
            w = onnx.numpy_helper.to_array(init)
            match = next((view for view in candidates.get(key(w), ()) if _identical(view, w)), None)
            if match is not None:
                shared[init.name] = match
    return shared


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values with equal signs of zero (``numpy.array_equal`` takes −0 for 0; ``1/x`` does not)."""
    return np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


def verify_torch(
    explainer: onnx.ModelProto,
    model: nn.Module,
    layers: Sequence[str],
    input_shape: tuple[int, int, int],
    rules: Sequence[str] = (),
    tolerance: float = 1e-4,
    batch: int = 3,
    seed: int = 0,
    scores_from: str | None = None,
    skipped: str | None = None,
    layouts: Mapping[str, contract.Layout] | None = None,
    draws: int = 3,
) -> Report:
    """The explainer graph in float64 (``onnx.reference``) vs float64 ``torch.autograd`` on random images, targets
    ``[-1, 0, K−1]``; raises when an output of an image differs by more than ``tolerance``. ``rules``: the input
    gradients the graph has (compared too). ``scores_from``, ``skipped``, ``layouts``: as :func:`torch_reference`.
    A graph with a unit layer is checked again with a random unit seed per image (:class:`~.verify.Objective`):
    its gradients vs autograd of ``Σ unit_seed ⊙ U`` (``U`` the unit module's output), entries ``… (unit path)``; a
    detector or dense output again with a random seed per image over the whole score tensor: vs autograd of
    ``Σ seed ⊙ scores``, entries ``… (seed path)`` (:func:`~.verify.objectives`).

    Float64 on both sides; expect ~1e-7: the rest is the float32 weights the exporter folded (e.g. BatchNorm into
    Conv). That rounding moves the graph's function ~1e-7 from PyTorch's, and an image whose ReLU inputs or max-pool
    windows lie that close to a kink gets different gradients on the two sides (common at 224 px on ResNet-50: 1 image
    in 3). Where an image's standard gradient disagrees, :func:`at_a_kink` asks the graph's own function which side
    is right; an image at a kink is dropped and a fresh one drawn (``draws`` rounds at most), a wrong graph is
    refused with the first node whose VJP disagrees (:mod:`.localize`). The modified input gradients (guided,
    deconvnet) have no function to ask: an image is dropped for them only when its standard gradients are at a kink.
    """
    from .autodiff.relu_backward import overrides
    from .localize import first_wrong_node

    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model64 = float64_copy(model)
    evaluate = float64_evaluator(explainer, OPS, shared_weights(explainer, model64))
    with torch.no_grad():
        classes = _score_dims(pick(model64(torch.zeros(1, *input_shape, dtype=torch.float64)), scores_from))[0]
    pattern = [contract.TOP1, 0, classes - 1]
    errors: dict[str, list[float]] = {}
    failed: dict[str, tuple[dict[str, np.ndarray], Objective]] = {}
    redrawn = 0
    for objective in objectives(explainer):
        kept = 0
        for _ in range(draws):
            want = batch - kept
            x = torch.randn(want, *input_shape, generator=generator, dtype=torch.float64)
            target = np.array([pattern[(kept + i) % 3] for i in range(want)], np.int64)
            feeds = {contract.INPUT: x.numpy(), contract.TARGET: target, **objective.draw(explainer, want, rng)}
            unit = None
            if objective.unit is not None:
                unit = (objective.unit.removeprefix(contract.ACTIVATION_PREFIX), feeds[contract.UNIT_SEED])
            ours = evaluate(feeds)
            try:
                seed_rows = feeds.get(contract.SEED)
                ref = torch_reference(model64, layers, x, target, rules, scores_from, skipped, layouts, unit, seed_rows)
            except Exception as exc:  # a model that cannot run in float64 is a verdict, not a traceback
                first = str(exc).strip().partition(chr(10))[0]
                reason = f"the float64 PyTorch reference failed: {type(exc).__name__}: {first}"
                raise CouldNotVerify(reason[:300]) from None
            # the seeded paths: their gradients and the unit tensor (the scores and maps were checked on the class path)
            checked = [
                k
                for k in ref
                if k != contract.TARGET_USED and (objective == CLASS_PATH or _source_of(k) or k == objective.unit)
            ]
            _refuse_model_non_finite(ours, ref, [k for k in checked if _source_of(k)], objective)
            for n in range(want):
                one = {k: v[n : n + 1] for k, v in feeds.items()}
                errs = {k: relative_error(ours[k][n], ref[k][n]) for k in checked}
                if ours[contract.TARGET_USED][n] != ref[contract.TARGET_USED][n]:
                    top2 = np.sort(ref[contract.SCORES][n].reshape(classes, -1).sum(1))[-2:]
                    if top2[1] - top2[0] <= 1e-6 * np.abs(top2).max():  # a top-1 tie: the same kink, in the argmax
                        redrawn += 1
                        continue
                    errs[contract.TARGET_USED] = 1.0
                wrong = [k for k, e in errs.items() if e > tolerance]
                standard = [k for k in wrong if (s := _source_of(k)) and s[1] == "standard"]
                gradients_only = all(_source_of(k) for k in wrong)
                if (
                    standard
                    and gradients_only
                    and all(at_a_kink(explainer, evaluate, k, ours[k][n], ref[k][n], one, objective) for k in standard)
                ):
                    redrawn += 1
                    continue
                kept += 1
                for k, e in errs.items():
                    errors.setdefault(k + objective.suffix, []).append(e)
                for k in wrong:
                    failed.setdefault(k + objective.suffix, (one, objective))
            if kept == batch:
                break
        if not kept:
            raise CouldNotVerify(f"all {redrawn} verification images lie at a kink of the network")

    def where(name: str) -> str:
        if name not in failed:
            return ""
        feeds, objective = failed[name]
        source = _source_of(name.removesuffix(objective.suffix))
        if source is None:
            return ""
        return first_wrong_node(explainer, source[0], feeds, OPS, overrides(source[1]), objective.end)

    return check(Report({k: tuple(v) for k, v in errors.items()}, redrawn), tolerance, where)
