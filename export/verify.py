"""Check an explainer graph before it is written: measuring it against a reference (no torch here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam import contract

from . import large_protos
from .errors import ExportError
from .float64 import CouldNotVerify, cut_after, float64_evaluator
from .layouts import from_nchw_array, to_nchw_array


class VerificationError(ExportError):
    """The explainer graph disagrees with the reference beyond tolerance."""


class TieSuspected(VerificationError):
    """The graph disagrees with finite differences at this draw, but every node's VJP agrees locally: most likely a
    kink (a ReLU input or a max-pooling tie) that the differences crossed; another draw decides
    (:func:`.fixed_batch_verify.verify_in_chunks`)."""


class NonFiniteGradient(VerificationError):
    """The model itself has no finite derivative at the verification images (its gradient or scores NaN or infinite
    where the graph's are, or every rule agreeing locally): no finite map exists, whatever the graph."""


def refuse_non_finite(name: str, images: int, batch: int, cause: str) -> NonFiniteGradient:
    """The one-line refusal of a gradient output ``name`` that is NaN or infinite for ``images`` of ``batch``
    verification images, ``cause`` saying why the model (not a rule) is at fault."""
    return NonFiniteGradient(
        f"{name} is NaN or infinite for {images} of {batch} verification images ({cause}): the model has no finite "
        "derivative there, so its maps would be NaN; make it finite (an epsilon inside a square root, log or "
        "division), explain another layer, or export with --no-verify if real images keep it finite"
    )


@dataclass(frozen=True)
class Report:
    """Relative error ``max|ours − ref| / max|ref|`` per checked output and per image.

    The verdict takes the worst image: images that lie within rounding of a kink (a ReLU input or a max-pool near-tie
    where the graph's float32 weights and the reference break differently) are detected and re-drawn before this
    report is made (``redrawn`` counts them), so one bad image is a wrong graph, not bad luck.
    """

    errors: dict[str, tuple[float, ...]]
    redrawn: int = 0

    @property
    def worst(self) -> float:
        return max(max(e) for e in self.errors.values())

    @property
    def typical(self) -> float:
        """The largest, over outputs, of the median error over images."""
        return max(float(np.median(e)) for e in self.errors.values())

    def summary(self) -> str:
        name = max(self.errors, key=lambda k: max(self.errors[k]))
        plural = "s" if self.redrawn > 1 else ""
        redrawn = f", {self.redrawn} image{plural} at a kink re-drawn" if self.redrawn else ""
        return (
            f"relative error {self.typical:.2e} (median image), worst {self.worst:.2e} ({name}), "
            f"{len(self.errors)} outputs{redrawn}{''.join(self._path_worst(s) for s in PATHS)}"
        )

    def _path_worst(self, suffix: str) -> str:
        """``; seed path worst 1.2e-08 (gradient:p3)`` for the entries with ``suffix``; empty when none."""
        entries = [k for k in self.errors if k.endswith(suffix)]
        if not entries:
            return ""
        worst = max(entries, key=lambda k: max(self.errors[k]))
        return f"; {suffix.strip(' ()')} worst {max(self.errors[worst]):.2e} ({worst.removesuffix(suffix)})"


#: Suffix of a :class:`Report` entry checked with a unit seed (graphs exported with a unit layer).
UNIT_PATH = " (unit path)"
#: Suffix of a :class:`Report` entry checked with a random seed over the whole score tensor.
SEED_PATH = " (seed path)"
#: The suffixes of the seeded paths, each summarised apart (:meth:`Report.summary`).
PATHS = (SEED_PATH, UNIT_PATH)


@dataclass(frozen=True)
class Objective:
    """What the graph's gradients differentiate, per image ``[N]``.

    - the class path (``seed`` None): ``y_n = Σ_positions scores[n, used_n]`` (``used`` = ``target_used`` where the
      check is made);
    - the seed path (``seed`` = ``contract.SEED``): ``y_n = Σ seed_n ⊙ scores_n``, a random Gaussian ``seed`` row fed
      per image (:meth:`draw`), so every entry of the score tensor is weighted at once;
    - the unit path (``seed`` = ``contract.UNIT_SEED``, ``unit`` = ``activation:<unit layer>``):
      ``y_n = Σ unit_seed_n ⊙ U_n``, a random Gaussian ``unit_seed`` row per image.
    """

    seed: str | None = None
    unit: str | None = None

    @property
    def seeded(self) -> str:
        """The graph output the seed weighs: the unit tensor or the scores."""
        return self.unit or contract.SCORES

    @property
    def reads(self) -> list[str]:
        """The graph outputs it reads."""
        return [self.seeded] if self.seed else [contract.SCORES, contract.TARGET_USED]

    @property
    def end(self) -> str:
        """The graph's tensor the gradients are taken of (where localisation walks to): the scores, or the unit
        graph's ``y`` (its seed ⊙ unit terms included)."""
        from .assemble import UNIT_OBJECTIVE

        return contract.SCORES if self.unit is None else UNIT_OBJECTIVE

    @property
    def fed(self) -> list[str]:
        """The inputs with a default that the check feeds (cut graphs take them as inputs, not as constants)."""
        return [self.seed] if self.seed else []

    def draw(self, explainer: onnx.ModelProto, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The seed rows to feed: ``{seed: [batch, *S]}`` standard-normal float64 (every row non-zero: used), ``S``
        the per-image shape of the input's default; nothing on the class path."""
        if self.seed is None:
            return {}
        default = next(t for t in explainer.graph.initializer if t.name == self.seed)
        return {self.seed: rng.standard_normal((batch, *default.dims[1:]))}

    def __call__(
        self, out: Mapping[str, np.ndarray], at: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """The objective ``y`` [N] from ``out`` (a cut graph's outputs), falling back on ``at`` (the whole graph's
        values at the checked point) for what does not depend on the cut's tensor (a unit before the tap: constant)."""
        return self.terms(out, at, feeds).sum(1)

    def rounding(
        self, out: Mapping[str, np.ndarray], at: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """``Σ |terms|`` [N]: the scale of ``y``'s float64 rounding, above ``|y|`` where its terms cancel (a seed of
        mixed signs, a dense class summed over positions)."""
        return np.abs(self.terms(out, at, feeds)).sum(1)

    def terms(
        self, out: Mapping[str, np.ndarray], at: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """The summands of ``y`` per image ``[N, M]``: ``scores[n, used_n]`` at each position, or ``seed_n ⊙ T_n``."""
        if self.seed is None:
            return picked_terms(out[contract.SCORES], at[contract.TARGET_USED])
        t = out[self.seeded] if self.seeded in out else at[self.seeded]
        return t.reshape(len(t), -1) * feeds[self.seed].reshape(len(t), -1)

    @property
    def suffix(self) -> str:
        """Appended to the names of its outputs in a :class:`Report`."""
        return {None: "", contract.SEED: SEED_PATH, contract.UNIT_SEED: UNIT_PATH}[self.seed]


#: The class path's objective (every graph has it).
CLASS_PATH = Objective()
#: The seed path's objective (:func:`objectives` says for which graphs).
SEED_PATH_OBJECTIVE = Objective(contract.SEED)


def objectives(explainer: onnx.ModelProto) -> list[Objective]:
    """The class path; the seed path where the class path's three targets leave most of the score tensor unchecked
    (:func:`needs_seed_path`); the unit path when the graph has a unit layer (metadata ``onnxcam.unit``)."""
    metadata = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props})
    unit = metadata.unit
    return [
        CLASS_PATH,
        *([SEED_PATH_OBJECTIVE] if needs_seed_path(explainer, metadata) else []),
        *([Objective(contract.UNIT_SEED, contract.activation_name(unit.layer))] if unit else []),
    ]


def needs_seed_path(explainer: onnx.ModelProto, metadata: contract.Metadata) -> bool:
    """Whether the graph is checked on the seed path too: for a detector (metadata ``onnxcam.detection``) and a dense
    output (``seed`` ``[N, K, H, W]``), not for a classifier (``[N, K]``).

    A detector's class-path targets ``[−1, 0, K−1]`` index its flattened ``[D·A]`` tensor: three entries (a box
    coordinate, anchor 0's ``cx``, the last anchor's last class), so the rules of the other rows, anchors and pyramid
    levels go unchecked; a dense output's one-hot seed is uniform over positions, so a rule right only for uniform
    cotangents (an upsampling's adjoint) passes. A classifier's class path already sends mixed-sign cotangents through
    every rule before its last layer, whose rule is the same for every column: the seed path would cost as much again
    (measured on ResNet-18, verify_torch: +0.5 s at 64 px, +3.6 s (+66 %) at 224 px) for little.
    """
    default = next(t for t in explainer.graph.initializer if t.name == contract.SEED)
    return metadata.detection is not None or len(default.dims) > 2


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours − ref| / max|ref|`` over the finite entries (absolute when ``ref`` is all zeros); ``inf`` when a
    NaN or infinity of one is not in the other at the same place (a NaN would compare as no error)."""
    bad = ~np.isfinite(ours)
    if bad.any() or not np.isfinite(ref).all():
        if not np.array_equal(bad, ~np.isfinite(ref)) or not np.array_equal(ours[bad], ref[bad], equal_nan=True):
            return float("inf")
        ours, ref = ours[~bad], ref[~bad]
        if not ref.size:
            return 0.0
    scale = float(np.abs(ref).max())
    return float(np.abs(ours - ref).max()) / (scale if scale > 0 else 1.0)


def finite_scale(dot: np.ndarray) -> float:
    """``max |dot|`` over its finite entries (at least 1e-300): the scale of directional derivatives ``dot``."""
    return max(float(np.abs(np.where(np.isfinite(dot), dot, 0.0)).max()), 1e-300)


def directional_error(fd: np.ndarray, dot: np.ndarray) -> np.ndarray:
    """``|fd_n − dot_n| / finite_scale(dot)`` per image: ``inf`` where ``dot`` (the graph's ``⟨G_n, v_n⟩``) is not
    finite (a NaN gradient is wrong, not unsettled), NaN where ``fd`` is (unsettled) and ``dot`` finite."""
    finite = np.isfinite(dot)
    return np.where(finite, np.abs(fd - np.where(finite, dot, 0.0)) / finite_scale(dot), np.inf)


def session_for(model: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model``, over 2 GiB too (:func:`.large_protos.session`)."""
    return large_protos.session(model)


def check(report: Report, tolerance: float, where: Callable[[str], str] = lambda _: "") -> Report:
    """``report`` when every image of every output is within ``tolerance``; else :class:`VerificationError`, with
    ``where(output)`` (e.g. the first node whose VJP disagrees) appended."""
    if report.worst > tolerance:
        name = max(report.errors, key=lambda k: max(report.errors[k]))
        raise VerificationError(
            f"explainer graph is wrong: {report.summary()} > tolerance {tolerance:.0e}{where(name)}"
        )
    return report


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], also: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every output of ``model`` on onnxruntime (CPU), and the tensors ``also`` (intermediate ones: the graph probed
    without a copy of its weights, :func:`.large_protos.session`); a failure is :class:`CouldNotVerify`, in one line."""
    try:
        extra = [n for n in also if n not in {o.name for o in model.graph.output}]
        probes = [onnx.helper.make_empty_tensor_value_info(n) for n in extra]
        session = large_protos.session(model, [*model.graph.output, *probes] if probes else None)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as exc:  # onnxruntime refusing the graph at the verification batch is a verdict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CouldNotVerify(
            f"onnxruntime cannot run the graph on a batch of {len(feeds[contract.INPUT])}: {first[:200]}"
        ) from None


def fast_kernels() -> list:
    """Torch-backed float64 Conv/pooling kernels when torch is installed (≈100× faster), else none."""
    try:
        from .float64_torch import OPS
    except ImportError:
        return []
    return OPS


#: Central differences: safety factor on float64 rounding of the objective, step ratio and number of steps tried.
_ROUNDING = 10.0
_RATIO = 4.0
_STEPS = 8


def settled_slopes(
    objective: Callable[[np.ndarray], np.ndarray], at: np.ndarray, scale: np.ndarray, agree: float
) -> np.ndarray:
    """``d/dt objective(t)`` at ``t = 0`` per image by central differences whose step is checked; NaN where unsettled.

    ``objective(t)`` [N] takes a step ``t`` [N] per image (along a direction the caller fixed), or gives the summands
    ``[N, M]`` of such an objective: they are differenced before they are summed, so a summand that does not depend
    on the step cancels exactly instead of adding its rounding. ``at`` [N] is the scale of the objective's rounding
    at 0 (its value, or the summed ``|summands|`` that move), ``scale`` [N] the slope's scale. The first step is the
    smallest whose rounding floor ``10·u·|f|/h`` (``u`` = float64 epsilon) is below ``agree·scale/8``, and at least
    1e-12 (the direction is scaled to the tensor, so steps are relative; small steps keep clear of kinks). Steps
    grow by 4 until two successive
    differences agree within ``agree·scale`` (no kink crossed, truncation and rounding small), and the Richardson
    extrapolation ``(16·D(h) − D(4h)) / 15`` of that pair is returned.
    """
    eps = np.finfo(np.float64).eps
    step = np.clip(8 * _ROUNDING * eps * np.abs(at) / (agree * np.maximum(scale, 1e-300)), 1e-12, 1e-2)
    slopes = np.full(at.shape, np.nan)
    previous = None
    for _ in range(_STEPS):
        d = (objective(step) - objective(-step)).reshape(len(step), -1).sum(1) / (2 * step)
        if previous is not None:
            settled = np.isnan(slopes) & (np.abs(d - previous) <= agree * scale)
            slopes[settled] = ((_RATIO**2 * previous - d) / (_RATIO**2 - 1))[settled]
            if not np.isnan(slopes).any():
                break
        previous, step = d, step * _RATIO
    return slopes


def picked_scores(scores: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``Σ_positions scores[n, used_n]`` [N] (a dense ``[N, K, H, W]`` output is summed over its positions): the
    objective whose gradient the graph's one-hot seed gives."""
    return picked_terms(scores, used).sum(1)


def picked_terms(scores: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``scores[n, used_n]`` at each position, ``[N, positions]`` (``[N, 1]`` for a classifier)."""
    picked = np.take_along_axis(scores, used.reshape(-1, *[1] * (scores.ndim - 1)), axis=1)
    return picked.reshape(len(scores), -1)


def moving_level(base: np.ndarray, along: Callable[[np.ndarray], np.ndarray], probe: float = 1e-3) -> np.ndarray:
    """``Σ_m |base_nm|`` over the summands ``[N, M]`` that change when ``along`` steps by ``probe`` [N]: the scale of
    the rounding that central differences of those summands carry (one summand: ``|base|``, no probe)."""
    if base.shape[1] == 1:
        return np.abs(base[:, 0])
    moved = along(np.full(len(base), probe)).reshape(base.shape) != base
    return (np.abs(base) * moved).sum(1)


def directional_errors(
    evaluate: Callable[[np.ndarray], dict[str, np.ndarray]],
    tap: np.ndarray,
    gradient: np.ndarray,
    objective: Callable[[dict[str, np.ndarray]], np.ndarray],
    rng: np.random.Generator,
    tolerance: float,
    directions: int = 2,
) -> tuple[np.ndarray, int]:
    """``|fd_n − ⟨G_n, v_n⟩| / max_m |⟨G_m, v_m⟩|`` per image, worst over random directions ``v``, and the number
    of images where the differences never settled (left out: 0 error). ``evaluate(a)`` runs the part after the tap,
    ``objective(outputs)`` is the differentiated quantity [N] or its summands [N, M] (:meth:`Objective.terms`). The
    first step follows the scale of the float64 rounding: the summed ``|summands|`` that move along the direction
    (:func:`moving_level`; a detector's anchors or a dense map's positions the tap does not reach cancel exactly in
    the differences, :func:`settled_slopes`).

    ``v`` is Gaussian, scaled to ``max|tap_n|`` and 0 where the tap is exactly 0 (post-ReLU zeros tie inside
    pooling windows, where no derivative exists).
    """
    batch = len(tap)
    worst = np.zeros(batch)
    unsettled = np.zeros(batch, bool)
    base = objective(evaluate(tap)).reshape(batch, -1)
    for _ in range(directions):
        size = np.abs(tap).reshape(batch, -1).max(1).reshape(-1, *[1] * (tap.ndim - 1))
        v = rng.standard_normal(tap.shape) * (tap != 0) * np.maximum(size, 1e-30)
        dot = (gradient * v).reshape(batch, -1).sum(1)
        scale = np.full(batch, finite_scale(dot))

        def along(t: np.ndarray) -> np.ndarray:
            shift = t.reshape(-1, *[1] * (tap.ndim - 1)) * v  # noqa: B023 - used within this iteration
            return objective(evaluate(tap + shift))

        level = moving_level(base, along)
        error = directional_error(settled_slopes(along, level, scale, tolerance / 4), dot)
        unsettled |= np.isnan(error)
        worst = np.maximum(worst, np.where(np.isnan(error), 0.0, error))
    return worst, int(unsettled.sum())


def after_tap(
    explainer: onnx.ModelProto,
    tap: str,
    feeds: dict[str, np.ndarray],
    keep: Sequence[str],
    fed: Sequence[str] = (),
) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]], np.ndarray, dict[str, np.ndarray]]:
    """The part of ``explainer`` after tensor ``tap`` as a float64 function ``a → {output in keep: value}``, the
    tensors it reads from elsewhere frozen at their onnxruntime values at ``feeds`` (``fed``: inputs with a default
    that ``feeds`` gives, kept as inputs); ``tap``'s value there (float32 computed, as float64); and the whole graph's
    values there (its outputs, the frozen tensors and ``feeds``)."""
    after, frozen = cut_after(explainer, tap, keep, fed)
    out = {**run(explainer, feeds, [f for f in dict.fromkeys([*frozen, tap]) if f not in feeds]), **feeds}
    fixed = {f: out[f] for f in frozen}
    run_after = float64_evaluator(after, fast_kernels())  # after the onnxruntime session is gone: not both at once
    return (lambda a: run_after({tap: a, **fixed})), out[tap].astype(np.float64), out


def _after_map(
    explainer: onnx.ModelProto,
    tap: str,
    layout: contract.Layout | None,
    feeds: dict[str, np.ndarray],
    keep: Sequence[str],
    fed: Sequence[str],
) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]], np.ndarray, dict[str, np.ndarray], str]:
    """:func:`after_tap` for the map ``tap`` in NCHW, whatever ``layout`` the model's tensor has: a token or
    channels-last layer is cut at the model's own tensor (``<tap>/raw``), and the map is laid back into it (prefix
    tokens held at their values), so the differences are taken along the map the ``gradient:`` output describes.
    Also returns the tensor cut at."""
    if layout is None or layout.kind == "nchw":
        return (*after_tap(explainer, tap, feeds, keep, fed), tap)
    raw = tap + "/raw"
    evaluate, tensor, at = after_tap(explainer, raw, feeds, keep, fed)
    return (lambda a: evaluate(from_nchw_array(a, tensor, layout))), to_nchw_array(tensor, layout), at, raw


def _refuse_model_non_finite(
    explainer: onnx.ModelProto,
    name: str,
    gradient: np.ndarray,
    values: Mapping[str, np.ndarray],
    source: tuple[str, dict[str, np.ndarray], Objective],
) -> None:
    """Raise :class:`NonFiniteGradient` when ``gradient`` (the graph's, per image) is NaN or infinite and the model
    is at fault: its scores are not finite either, or no node's VJP disagrees locally (:mod:`.localize`). A rule
    that emits NaN where the model's derivative is finite is left to the comparison (a wrong graph, the node named)."""
    from .localize import first_wrong_node

    bad = ~np.isfinite(gradient.reshape(len(gradient), -1)).all(1)
    if not bad.any():
        return
    scores = values[contract.SCORES].reshape(len(gradient), -1)
    if not np.isfinite(scores[bad]).all():
        raise refuse_non_finite(name, int(bad.sum()), len(bad), "their scores are NaN or infinite too")
    tap, feeds, objective = source
    if "first node" not in first_wrong_node(explainer, tap, feeds, fast_kernels(), end=objective.end):
        raise refuse_non_finite(
            name,
            int(bad.sum()),
            len(bad),
            "every node's VJP agrees locally: the derivative itself is infinite or undefined",
        )


def verify_finite_differences(
    explainer: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float = 1e-4,
    batch: int = 2,
    directions: int = 2,
    seed: int = 0,
) -> Report:
    """Directional central differences of ``Σ scores[n, t_n]`` (summed over positions for a dense output) w.r.t.
    each tapped map (and the input, when the graph has the standard input gradient) vs ``⟨gradient, v⟩``; for a graph
    with a unit layer, again with a random unit seed per image: of ``Σ unit_seed_n ⊙ U_n`` (:class:`Objective`,
    entries named ``… (unit path)``); for a detector or a dense output, again with a random seed per image over the
    whole score tensor: of ``Σ seed_n ⊙ scores_n`` (entries ``… (seed path)``, :func:`objectives`).

    The part of the explainer after the layer (forward head, seed and backward) runs in float64 under
    ``onnx.reference`` from the float32 map ``A`` that onnxruntime computed, so the check sees the graph's mathematics,
    not float32 rounding. Steps follow :func:`settled_slopes` (from the objective's and the map's scale, checked by two
    steps agreeing), so a bias-dominated logit or a tiny map does not drown the difference in rounding. Raises
    :class:`VerificationError` naming the first node whose local VJP disagrees (:mod:`.localize`),
    :class:`TieSuspected` when none does, or :class:`CouldNotVerify` when the differences settle for no image.
    """
    from .localize import TIE_HINT, first_wrong_node

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.array([contract.TOP1, 0, 1][:batch], np.int64)
    errors: dict[str, tuple[float, ...]] = {}
    sources: dict[str, tuple[str, dict[str, np.ndarray], Objective]] = {}
    metadata = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props})
    layouts = {contract.activation_name(layer): metadata.layout(layer) for layer in layers}
    pairs = [(contract.activation_name(layer), contract.gradient_name(layer)) for layer in layers]
    if contract.INPUT_GRADIENT in {o.name for o in explainer.graph.output}:
        pairs.append((contract.INPUT, contract.INPUT_GRADIENT))
    for objective in objectives(explainer):
        seeds = {k: v.astype(np.float32) for k, v in objective.draw(explainer, batch, rng).items()}
        feeds = {contract.INPUT: x, contract.TARGET: target, **seeds}
        for tap, grad in pairs:
            keep = [*objective.reads, grad]
            evaluate, activation, at, cut = _after_map(explainer, tap, layouts.get(tap), feeds, keep, objective.fed)
            base = evaluate(activation)
            values = {**at, **base}
            _refuse_model_non_finite(explainer, grad + objective.suffix, base[grad], values, (cut, feeds, objective))
            worst, unsettled = directional_errors(
                evaluate,
                activation,
                base[grad],
                lambda out: objective.terms(out, values, feeds),  # noqa: B023 - used within this iteration
                rng,
                tolerance,
                directions,
            )
            name = grad + objective.suffix
            if unsettled == batch:
                raise CouldNotVerify(f"finite differences for {name} settle at no step (kinks at every scale)")
            errors[name] = tuple(worst.tolist())
            sources[name] = (cut, feeds, objective)

    def where(name: str) -> str:
        tap, feeds, objective = sources[name]
        return first_wrong_node(explainer, tap, feeds, fast_kernels(), end=objective.end)

    try:
        return check(Report(errors), tolerance, where)
    except VerificationError as exc:
        if str(exc).endswith(TIE_HINT):
            raise TieSuspected(str(exc)) from None
        raise
