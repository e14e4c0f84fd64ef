"""Unit targets: explain a unit of an intermediate layer instead of a class (contract ``unit_seed``).

A graph exported with ``--unit-layer L`` (metadata ``onnxcam.unit``) takes a seed over the unit tensor ``U`` of ``L``
(``[N, C, h, w]`` or ``[N, K]``) and explains ``y_n = Σ unit_seed_n ⊙ U_n``. Targets name the seed:

``channel:C``      mean of channel ``C`` over its positions, ``unit_seed[C, :, :] = 1/(h·w)`` (a ``[K]`` tensor: unit C)
``neuron:C,Y,X``   one position of one channel, ``unit_seed[C, Y, X] = 1``
``unit:K``         element ``K`` of the flattened unit tensor (an embedding unit of a ``[N, K]`` tensor)

Every method works on the unit through :class:`UnitAccess`, the model as the methods query it with the unit tensor
as the "scores": CAMs read the layer gradients of ``y``; input-gradient methods feed ``unit_seed``; perturbation
methods and metrics score ``Σ seed ⊙ U`` of perturbed inputs. Head graphs (Ablation-CAM) end at the class scores,
so they refuse. These are the channel/neuron objectives of Olah et al. 2017, "Feature Visualization" (Distill), and
pytorch-grad-cam's custom target functions returning a unit's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import contract
from .targets import TargetError

if TYPE_CHECKING:
    from .explainer import Explainer, Explanation

KINDS = ("channel", "neuron", "unit")


@dataclass(frozen=True)
class UnitTarget:
    """A unit of the graph's unit layer: ``kind`` (:data:`KINDS`), its ``index`` and the ``seed`` ``[*U]``."""

    kind: str
    index: tuple[int, ...]
    layer: str
    seed: np.ndarray

    @property
    def name(self) -> str:
        """E.g. ``channel:12 of layer4``."""
        return f"{self.kind}:{','.join(map(str, self.index))} of {self.layer}"


def is_unit_spec(target: Any) -> bool:
    """Whether ``target`` is a unit target (a string ``channel:…``, ``neuron:…`` or ``unit:…``, or a UnitTarget)."""
    if isinstance(target, UnitTarget):
        return True
    return isinstance(target, str) and target.strip().lower().partition(":")[0] in KINDS and ":" in target


def parse_unit(target: str | UnitTarget, unit: contract.Unit | None) -> UnitTarget:
    """The :class:`UnitTarget` of ``target`` on the graph's unit tensor; :class:`TargetError` (one line) when the
    graph has no unit layer, the spec is malformed, or an index is out of range."""
    if isinstance(target, UnitTarget):
        return target
    if unit is None:
        raise TargetError(
            f"target '{target}' explains a unit, but this graph has no unit layer: re-export it with "
            "--unit-layer LAYER (Python: unit_layer=...)"
        )
    kind, _, rest = target.strip().partition(":")
    kind = kind.lower()
    try:
        index = tuple(int(v) for v in rest.split(","))
    except ValueError:
        raise TargetError(f"target '{target}': expected {_forms(unit)}") from None
    shape = unit.shape
    seed = np.zeros(shape, np.float32)
    if kind == "unit" and len(index) == 1 and 0 <= index[0] < seed.size:
        seed.reshape(-1)[index[0]] = 1.0
    elif kind == "channel" and len(index) == 1 and 0 <= index[0] < shape[0]:
        seed[index[0]] = 1.0 / max(1, seed[0].size)
    elif kind == "neuron" and len(shape) == len(index) == 3 and min(index) >= 0 and all(np.less(index, shape)):
        seed[index] = 1.0
    else:
        raise TargetError(
            f"target '{target}' does not fit the unit layer '{unit.layer}' of shape {list(shape)}: {_forms(unit)}"
        )
    return UnitTarget(kind, index, unit.layer, seed)


def _forms(unit: contract.Unit) -> str:
    """The target forms the unit tensor takes, with their ranges."""
    shape = unit.shape
    flat = int(np.prod(shape))
    if len(shape) == 1:
        return f"channel:K or unit:K with 0 ≤ K < {shape[0]}"
    c, h, w = shape
    return f"channel:C (0 ≤ C < {c}), neuron:C,Y,X (Y < {h}, X < {w}) or unit:K (0 ≤ K < {flat})"


class UnitAccess:
    """The model as methods query it (:class:`onnxcam.methods.request.ModelAccess`), with the unit tensor ``U``
    ``[M, *U]`` in place of the scores: ``input_gradient`` is ``∂ Σ(seed ⊙ U) / ∂x``."""

    def __init__(self, explainer: Explainer) -> None:
        if explainer.metadata.unit is None:
            raise ValueError("this graph has no unit layer: re-export it with --unit-layer LAYER")
        self.explainer = explainer
        self.unit = explainer.metadata.unit
        self.tap = contract.activation_name(self.unit.layer)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The unit tensor ``[M, *U]`` of preprocessed inputs ``x`` (forward pass only, in chunks)."""
        e = self.explainer
        return e._chunked([self.tap], lambda rows: e._feeds(x[rows], compute=()), len(x)).astype(np.float32)

    def input_gradient(self, x: np.ndarray, seed: np.ndarray, rule: str = "standard") -> np.ndarray:
        """``∂ Σ(seed ⊙ U(x)) / ∂x`` ``[M, C, H, W]`` with the ReLU backward ``rule`` (exported in the graph)."""
        e = self.explainer
        if rule not in e.metadata.input_gradients:
            have = ", ".join(e.metadata.input_gradients) or "none"
            raise ValueError(
                f"this graph has no '{rule}' input gradient (it has: {have}); re-export it with --input-gradient {rule}"
            )
        seed = np.broadcast_to(np.asarray(seed, np.float32), (len(x), *self.unit.shape))
        name = contract.input_gradient_name(rule)
        on = (contract.switch_name(name),)
        return e._chunked([name], lambda rows: e._feeds(x[rows], compute=on, unit_seed=seed[rows]), len(x))

    def head_scores(self, layer: str, activations: np.ndarray) -> np.ndarray:
        raise ValueError(
            "head graphs end at the class scores, not at a unit: Ablation-CAM cannot explain a unit target "
            "(use Score-CAM, Grad-CAM or another method)"
        )


def unit_seeds(targets: list[UnitTarget]) -> np.ndarray:
    """The ``unit_seed`` rows ``[N, *U]`` of one target per image."""
    return np.stack([t.seed for t in targets]).astype(np.float32)


def explain_units(
    explainer: Explainer,
    x: np.ndarray,
    targets: list[Any],
    methods: list[str],
    layers: list[str],
    topk: int,
    eigen_smooth: bool,
    options: dict[str, Any] | None,
    metrics: Any,
    isolate_methods: bool,
) -> list[Explanation]:
    """:meth:`Explainer.explain_arrays` for unit targets (one per image): one run with ``unit_seed``, then every
    method through :class:`UnitAccess`. Each result has ``class_index`` −1, ``label`` the unit (``channel:12 of
    layer4``), ``score`` the unit's value ``Σ seed ⊙ U``, no probability, ``seed`` the unit seed ``[*U]`` and the
    model's top-k classes."""
    from .explainer import Explanation
    from .methods.request import MethodRequest, objective
    from .scores import RAW
    from .scores import topk as top_classes

    if not all(isinstance(t, UnitTarget) for t in targets):
        raise ValueError("one batch explains either units (channel:/neuron:/unit:) or classes, not both")
    access = UnitAccess(explainer)
    seed = unit_seeds(targets)
    out = explainer.run(x, np.full(len(x), contract.TOP1, np.int64), unit_seed=seed)
    layer = explainer.metadata.unit.layer  # type: ignore[union-attr]
    for name in layers:
        if not out.gradients[name].any():
            raise ValueError(
                f"{targets[0].name}: the gradient at layer '{name}' is zero for every image: the layer lies after the "
                f"unit layer '{layer}' (the unit does not depend on it) or the unit is off for these images (e.g. a "
                f"ReLU channel at 0); explain a layer before '{layer}', or another unit"
            )
    order, values = top_classes(out.scores, explainer.scores_kind, topk)
    results = [
        Explanation(
            class_index=contract.TOP1,
            label=t.name,
            score=float(y),
            probability=float("nan"),
            topk=[(int(i), explainer.label(int(i)), float(v)) for i, v in zip(order[n], values[n], strict=True)],
            seed=seed[n],
        )
        for n, (t, y) in enumerate(zip(targets, objective(out.unit, seed), strict=True))
    ]
    request = MethodRequest(
        access,
        x,
        seed,
        out.unit,
        {layer: out.activations[layer] for layer in layers},
        {layer: out.gradients[layer] for layer in layers},
        options or {},
        scores_kind=RAW,
    )
    return explainer._apply_methods(results, request, out, methods, layers, eigen_smooth, metrics, isolate_methods)


def metric_access(explainer: Explainer, target: Any) -> tuple[Any, str]:
    """The model view and scores kind that faithfulness metrics score ``target`` with: :class:`UnitAccess` and raw
    values for a unit target, else the explainer and its scores kind."""
    if is_unit_spec(target):
        return UnitAccess(explainer), "raw"
    return explainer, explainer.scores_kind
