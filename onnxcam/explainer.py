"""The Python API: an :class:`Explainer` over one explainer graph turns images into CAM maps (no torch)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from . import contract
from .fixed_batch import FixedBatchSession
from .images import read_image
from .methods import CamMethod, get_method
from .methods.options import check_options
from .methods.request import MethodRequest, ModelMethod, objective
from .model_file import ExplainerGraph, check_input_size, open_graph
from .pixels import PixelFormatError, files_refusal
from .postprocess import fuse, layer_map, normalize
from .preprocess import preprocess, preprocess_batch
from .providers import check_used, provider_list, session_options
from .score_clip import ScoreClip, clip_warning, find_clip, partial_probe
from .scores import (
    BINARY_SIDES,
    LOGITS,
    RAW,
    ScoresError,
    check_kind,
    class_count,
    class_labels,
    class_probabilities,
    class_seed,
    class_set_seed,
    is_binary,
    predicted_classes,
    target_probability,
    top1,
    topk,
)
from .targets import ClassSet, Target, TargetError, resolve_target
from .units import UnitTarget, explain_units, is_unit_spec, parse_unit

if TYPE_CHECKING:
    from .detection import Detections

#: Target asking for every class the model predicts (:meth:`Explainer.explain_predicted`).
PREDICTED = "predicted"

ImageLike = str | Path | np.ndarray


@dataclass(frozen=True)
class GraphOutputs:
    """One run of the explainer graph on a batch."""

    scores: np.ndarray
    target_used: np.ndarray
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    unit: np.ndarray | None = None  # the unit tensor ``[N, *U]`` of a graph with a unit layer


@dataclass(frozen=True)
class MethodMaps:
    """One method's output for a batch: final maps ``[N, H, W]``, and raw layer maps or input attributions."""

    final: np.ndarray
    raw: dict[str, np.ndarray] | None
    attributions: np.ndarray | None
    details: dict[str, np.ndarray]


@dataclass
class Explanation:
    """The explanation of one image.

    ``maps[method]``: final map at network input resolution, values in [0, 1] (layers fused).
    ``raw[method][layer]``: the un-normalised map at layer resolution (compare magnitudes across images).
    ``attributions[method]``: input-resolution attributions ``[C, H, W]`` of the input-gradient methods.
    ``details[method]``: per-image numbers a method reports (e.g. Integrated Gradients' ``completeness_gap``).
    ``metrics[method][metric]``: faithfulness scores of the map (:mod:`onnxcam.metrics`), when asked for.
    ``topk``: ``(class index, label, probability)``, the probabilities as the graph's scores kind defines them
    (:mod:`onnxcam.scores`: softmax of logits, sigmoid, …; of the spatial mean of a dense output; ``raw`` scores
    are ranked by value and list the value). ``class_index`` is ``-1`` and ``score`` is ``Σ seed ⊙ scores`` when a
    seed (or a set of classes, then ``label`` joins their names with ``+``) was explained. A single-logit binary
    head has two classes: 0 = negative (explains ``−logit``, probability ``1 − σ``), 1 = positive. ``seed``: the
    weights ``[*S]`` of the explained quantity. ``score_clip``: the explained score is an int8 score clipped at its
    quantization range (gradient 0, :mod:`onnxcam.score_clip`). ``warnings``: one line each, e.g. that clip naming
    the maps it leaves blank.
    """

    class_index: int
    label: str | None
    score: float
    probability: float
    topk: list[tuple[int, str | None, float]]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # original (H, W) when known
    seed: np.ndarray | None = None
    errors: dict[str, str] = field(default_factory=dict)  # method → one-line cause (``isolate_methods`` only)
    warnings: list[str] = field(default_factory=list)  # one line each: why the maps may say little (e.g. blank)
    score_clip: ScoreClip | None = None


def _float32(values: np.ndarray) -> np.ndarray:
    """A graph output as float32 (a float16 graph's ``activation:``/``gradient:`` come in float16)."""
    return values if values.dtype == np.float32 else values.astype(np.float32)


def one_hot_seed(classes: np.ndarray, score_shape: Sequence[int]) -> np.ndarray:
    """The seed of class targets: ``seed[n, k, …] = [k = classes[n]]`` broadcast over a dense output's positions."""
    return class_seed(classes, LOGITS, score_shape)


def _class_indices(resolved: Sequence[int | ClassSet]) -> np.ndarray:
    """Class index per image ``[N]`` int64; ``-1`` for top-1 and for class sets (explained through the seed)."""
    return np.array([-1 if isinstance(r, ClassSet) else r for r in resolved], np.int64)


def head_weights(gradients: np.ndarray) -> np.ndarray:
    """CAM weights ``w^c`` of a GAP→Linear head, read off the gradient: there ``G = w^c / Z`` at every position."""
    mean = gradients.mean(axis=(2, 3))
    spread = np.abs(gradients - mean[..., None, None]).max()
    if spread > 1e-5 * max(float(np.abs(gradients).max()), 1e-12):
        raise ValueError("CAM needs a global-average-pooling → linear head after the layer (the gradient varies)")
    return mean * (gradients.shape[2] * gradients.shape[3])


class Explainer:
    """Explain images with an onnxcam explainer graph on onnxruntime.

    ``provider``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``; ``self.provider`` says which runs.
    ``preprocess`` overrides the graph's own preprocessing metadata. ``initializers`` replace weights of the file by
    name (same shape and type; :mod:`onnxcam.metrics.mprt` randomises layers this way).
    """

    def __init__(
        self,
        model: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        preprocess: contract.Preprocess | None = None,
        initializers: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        providers = provider_list(provider)
        options = session_options(threads)
        self._initializer_values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in (initializers or {}).items()}
        for name, value in self._initializer_values.items():
            options.add_initializer(name, value)
        self.path, self.provider_choice, self.threads = Path(model), provider, threads
        self.graph: ExplainerGraph = open_graph(model, providers, options)
        check_used(provider, self.graph.providers)
        self.metadata = self.graph.metadata
        if self.metadata.fixed_batch is not None:  # runs chunks of exactly that many images (:mod:`.fixed_batch`)
            self.graph = replace(self.graph, session=FixedBatchSession(self.graph.session, self.metadata.fixed_batch))
        self.preprocess = preprocess or self.metadata.preprocess
        mismatch = check_input_size(self.graph, preprocess) if preprocess is not None else None
        if mismatch is not None:
            raise ValueError(mismatch)
        self.layers = self.metadata.layers
        self.score_shape = tuple(int(d) for d in self.graph.output(contract.SCORES).shape[1:])
        self.scores_kind = check_kind(self.metadata.scores_kind)
        self.binary = is_binary(self.scores_kind, self.score_shape)
        self.classes = class_count(self.scores_kind, self.score_shape)
        self.labels = class_labels(self.scores_kind, self.score_shape, self.metadata.labels)
        self.max_batch = 64
        self.input_shape = (self.preprocess.channels, *self.preprocess.input_size)
        self._optional = {i.name for i in self.graph.session.get_overridable_initializers()}
        #: element types of the optional inputs (a float16 graph's head inputs are float16)
        self._input_types = {
            i.name: np.float16 if i.type == "tensor(float16)" else np.float32
            for i in self.graph.session.get_overridable_initializers()
        }
        self.has_seed = contract.SEED in self._optional
        self._names = [
            contract.SCORES,
            contract.TARGET_USED,
            *(f(layer) for f in (contract.activation_name, contract.gradient_name) for layer in self.layers),
        ]
        unit = self.metadata.unit
        self._unit_tap = contract.activation_name(unit.layer) if unit is not None else None
        if self._unit_tap is not None and self._unit_tap not in self._names:
            self._names.append(self._unit_tap)

    @property
    def any_size(self) -> bool:
        """Whether the graph takes inputs of any height and width (exported with dynamic H×W)."""
        shape = next(i.shape for i in self.graph.session.get_inputs() if i.name == contract.INPUT)
        return len(shape) == 4 and not any(isinstance(d, int) for d in shape[2:])

    def check_keep_size(self) -> None:
        """Raise ``ValueError`` (one line) unless :attr:`any_size`: images cannot keep their size."""
        if not self.any_size:
            h, w = self.preprocess.input_size
            raise ValueError(
                f"keep-size: this explainer graph takes {h}x{w} inputs only (exported with a fixed or pinned height "
                "and width); export from an ONNX file with dynamic H/W, or drop keep-size to resize the images"
            )

    @property
    def provider(self) -> str:
        """The execution provider running the graph (``CUDAExecutionProvider`` or ``CPUExecutionProvider``)."""
        return self.graph.providers[0]

    def label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else None

    def resolve_target(self, target: Target) -> int | ClassSet | UnitTarget:
        """A class index (``-1`` = top-1) or a :class:`ClassSet`; a binary head also takes ``positive``/``negative``
        (and ``predicted``: its predicted side). ``predicted`` (every label above a threshold, one map each) is
        :meth:`explain_predicted`'s job. ``channel:C``, ``neuron:C,Y,X``, ``unit:K``: a unit of the graph's unit
        layer (:mod:`onnxcam.units`)."""
        if is_unit_spec(target):
            return parse_unit(target, self.metadata.unit)  # type: ignore[arg-type]
        name = target.strip().lower() if isinstance(target, str) else None
        if self.binary and name in (*BINARY_SIDES, PREDICTED):
            return contract.TOP1 if name == PREDICTED else BINARY_SIDES.index(name)
        if name == PREDICTED:
            raise TargetError(
                "'predicted' (every class above a probability threshold, one map each) is Explainer.explain_predicted;"
                " here name one class, top1, or a comma list of classes (one map of their sum)"
            )
        resolved = resolve_target(target, self.labels, self.classes)
        if isinstance(resolved, ClassSet):
            class_set_seed(resolved.classes, self.scores_kind, self.score_shape)  # refuses a binary head's sides
        return resolved

    def _resolved(self, target: Target | Sequence[Target], n: int) -> list[int | ClassSet]:
        per_image = list(target) if isinstance(target, (list, tuple)) else [target] * n
        if len(per_image) != n:
            raise ValueError(f"{len(per_image)} targets for {n} images")
        return [self.resolve_target(t) for t in per_image]

    def targets(self, target: Target | Sequence[Target], n: int) -> np.ndarray:
        """Per-image class indices (``-1`` = top-1, or a set of classes) from one target for all images or one per
        image. For a binary head the indices are sides (0 = negative, 1 = positive), see :mod:`onnxcam.scores`."""
        return _class_indices(self._resolved(target, n))

    def _seeds(self, resolved: Sequence[int | ClassSet], seed: np.ndarray | None) -> np.ndarray | None:
        """``seed`` ``[N, *S]`` with the rows of class-set targets filled in (rows given non-zero are kept)."""
        sets = [(i, r) for i, r in enumerate(resolved) if isinstance(r, ClassSet)]
        if not sets:
            return seed
        shape = (len(resolved), *self.score_shape)
        rows = np.zeros(shape, np.float32) if seed is None else np.array(seed, np.float32)
        for i, wanted in sets:
            if not rows[i].any():
                rows[i] = class_set_seed(wanted.classes, self.scores_kind, self.score_shape)
        return rows

    def _feeds(
        self,
        x: np.ndarray,
        target: np.ndarray | None = None,
        seed: np.ndarray | None = None,
        compute: tuple[str, ...] = (contract.GRADIENTS_SWITCH,),
        unit_seed: np.ndarray | None = None,
    ) -> dict:
        """Feeds for one run; ``compute``: the switches to turn on (every other one of the graph is turned off);
        ``unit_seed`` ``[N, *U]``: explain units of the unit layer (:mod:`onnxcam.units`)."""
        feeds: dict[str, np.ndarray] = {
            contract.INPUT: np.ascontiguousarray(x, np.float32),
            contract.TARGET: np.full(len(x), contract.TOP1, np.int64) if target is None else target,
        }
        for name in self._optional:
            if name.startswith(contract.SWITCH_PREFIX):
                feeds[name] = np.array(name in compute)
        if seed is not None:
            if not self.has_seed:
                raise ValueError("this graph has no 'seed' input: re-export it with this onnxcam to explain seeds")
            feeds[contract.SEED] = np.ascontiguousarray(np.broadcast_to(seed, (len(x), *self.score_shape)), np.float32)
        if unit_seed is not None:
            feeds[contract.UNIT_SEED] = np.ascontiguousarray(unit_seed, np.float32)
        return feeds

    def run(
        self, x: np.ndarray, target: np.ndarray, seed: np.ndarray | None = None, unit_seed: np.ndarray | None = None
    ) -> GraphOutputs:
        """One session run on a preprocessed batch ``x`` ``[N, C, H, W]`` with class indices ``target`` ``[N]``.

        ``seed`` ``[N, *S]`` (optional): explain ``Σ seed ⊙ scores`` instead, for images whose seed row is non-zero;
        ``unit_seed`` ``[N, *U]``: explain ``Σ unit_seed ⊙ U`` of the unit layer for rows that are non-zero.
        """
        values = self.graph.session.run(self._names, self._feeds(x, target, seed, unit_seed=unit_seed))
        out = dict(zip(self._names, values, strict=True))
        return GraphOutputs(
            scores=out[contract.SCORES],
            target_used=out[contract.TARGET_USED],
            activations={layer: _float32(out[contract.activation_name(layer)]) for layer in self.layers},
            gradients={layer: _float32(out[contract.gradient_name(layer)]) for layer in self.layers},
            unit=_float32(out[self._unit_tap]) if self._unit_tap else None,
        )

    def _chunked(self, names: list[str], feeds: Callable[[slice], dict], count: int) -> np.ndarray:
        """Run ``names[0]`` over ``count`` rows in chunks of ``max_batch``; ``feeds(rows)`` gives a chunk's feeds."""
        parts = [
            self.graph.session.run(names, feeds(slice(i, i + self.max_batch)))[0]
            for i in range(0, count, self.max_batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, *self.score_shape), np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` of preprocessed inputs ``x`` (forward pass only, in chunks of ``max_batch``)."""
        return self._chunked([contract.SCORES], lambda rows: self._feeds(x[rows], compute=()), len(x))

    def input_gradient(self, x: np.ndarray, seed: np.ndarray, rule: str = "standard") -> np.ndarray:
        """``∂ Σ(seed ⊙ scores(x)) / ∂x`` ``[M, C, H, W]`` with the ReLU backward ``rule`` (exported in the graph)."""
        if rule not in self.metadata.input_gradients:
            have = ", ".join(self.metadata.input_gradients) or "none"
            raise ValueError(
                f"this graph has no '{rule}' input gradient (it has: {have}); re-export it with --input-gradient {rule}"
            )
        seed = np.broadcast_to(seed, (len(x), *self.score_shape))
        name = contract.input_gradient_name(rule)
        on = (contract.switch_name(name),)
        return self._chunked([name], lambda rows: self._feeds(x[rows], seed=seed[rows], compute=on), len(x))

    def layer_outputs(self, x: np.ndarray, seed: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Activations and gradients ``∂ Σ(seed ⊙ scores(x)) / ∂A`` ``[M, K, h, w]`` of every layer, by layer name,
        for inputs ``x`` ``[M, C, H, W]`` and seeds ``[M, *S]`` (in chunks of ``max_batch``)."""
        seed = np.broadcast_to(seed, (len(x), *self.score_shape))
        runs = []
        for start in range(0, len(x), self.max_batch):
            rows = slice(start, start + self.max_batch)
            runs.append(self.run(x[rows], np.full(len(x[rows]), contract.TOP1, np.int64), seed[rows]))
        acts = {layer: np.concatenate([r.activations[layer] for r in runs]) for layer in self.layers}
        return acts, {layer: np.concatenate([r.gradients[layer] for r in runs]) for layer in self.layers}

    def bias_gradients(self, x: np.ndarray, seed: np.ndarray) -> list[np.ndarray]:
        """FullGrad's terms (:meth:`onnxcam.methods.request.ModelAccess.bias_gradients`), in chunks of ``max_batch``;
        ValueError when the graph was exported without ``--bias-gradients``."""
        count = len(self.metadata.bias_gradients)
        if not count:
            raise ValueError("this graph has no bias gradients (FullGrad): re-export it with --bias-gradients")
        names = [contract.bias_gradient_name(i) for i in ("input", *map(str, range(count)))]
        return self._switched_outputs(names, contract.BIAS_SWITCH, x, seed)

    def hvp(self, x: np.ndarray, seed: np.ndarray) -> dict[str, np.ndarray]:
        """ShapleyCAM's ``H·A`` by layer (:meth:`onnxcam.methods.request.ModelAccess.hvp`), in chunks of
        ``max_batch``; ValueError when the graph was exported without ``--hvp``."""
        if not self.metadata.hvp:
            raise ValueError("this graph has no Hessian-vector products (ShapleyCAM): re-export it with --hvp")
        names = [contract.hvp_name(layer) for layer in self.metadata.hvp]
        values = self._switched_outputs(names, contract.HVP_SWITCH, x, seed)
        return dict(zip(self.metadata.hvp, values, strict=True))

    def _switched_outputs(self, names: list[str], switch: str, x: np.ndarray, seed: np.ndarray) -> list[np.ndarray]:
        """The optional outputs ``names`` behind ``switch`` for inputs ``x`` and seeds ``seed``, in chunks of
        ``max_batch`` (float32)."""
        seed = np.broadcast_to(seed, (len(x), *self.score_shape))
        runs = []
        for start in range(0, len(x), self.max_batch):
            rows = slice(start, start + self.max_batch)
            runs.append(self.graph.session.run(names, self._feeds(x[rows], seed=seed[rows], compute=(switch,))))
        return [np.concatenate([_float32(r[j]) for r in runs]) for j in range(len(names))]

    def head_scores(self, layer: str, activations: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` from feature maps ``[M, C, h, w]`` of ``layer``: only the part after it runs."""
        if layer not in self.metadata.heads:
            raise ValueError(
                f"this graph has no head graph for layer '{layer}' (heads: {', '.join(self.metadata.heads) or 'none'});"
                " re-export it with this onnxcam"
            )
        name = contract.head_scores_name(layer)
        no_images = np.zeros((0, *self.input_shape), np.float32)  # the network before the layer runs on nothing

        dtype = self._input_types.get(contract.head_input_name(layer), np.float32)
        limit = np.finfo(dtype).max  # saturate, not ±inf: Ablation-CAM's −1e7 is −65504 in a float16 head

        def feeds(rows: slice) -> dict:
            maps = np.ascontiguousarray(np.clip(activations[rows], -limit, limit), dtype)
            return {
                **self._feeds(no_images, compute=(contract.switch_name(name),)),
                contract.head_input_name(layer): maps,
            }

        return self._chunked([name], feeds, len(activations))

    def explain_arrays(
        self,
        x: np.ndarray,
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
        seed: np.ndarray | None = None,
        options: dict[str, Any] | None = None,
        metrics: Sequence[str] = (),
        isolate_methods: bool = False,
        aug_smooth: bool = False,
    ) -> list[Explanation]:
        """Explain a preprocessed batch ``x`` ``[N, C, H, W]``; maps come at ``H×W``.

        ``methods``: a name or a sequence of names. ``seed`` ``[N, *S]`` or ``[*S]``: explain ``Σ seed ⊙ scores``
        (rows of zeros fall back to ``target``). ``options``: parameters of the perturbation and input-gradient
        methods and of the metrics (e.g. ``{"steps": 32}``; an unknown key or a bad value raises ValueError before
        any work, see :func:`onnxcam.methods.options.check_options`). ``metrics``: faithfulness metrics to score every
        map with (forward passes only). ``isolate_methods``: a method that fails leaves its cause in each result's
        ``errors`` and the other methods go on (default: the exception propagates). ``aug_smooth``: pytorch-grad-cam's
        test-time augmentation, every method's maps averaged over six flipped/scaled copies (:mod:`onnxcam.augment`).
        """
        if aug_smooth:
            from .augment import explain_augmented

            return explain_augmented(
                self, x, target, methods, layers, topk, eigen_smooth, seed, options, metrics, isolate_methods
            )
        if x.ndim != 4 or x.shape[1] != self.input_shape[0]:
            raise ValueError(
                f"explain_arrays takes a preprocessed batch [N, {self.input_shape[0]}, H, W], got shape {x.shape}; "
                "pass images (H×W×C arrays or paths) to explain()"
            )
        methods = [methods] if isinstance(methods, str) else list(methods)
        options = check_options(methods, metrics, options, x.shape[2:4])
        if metrics:
            from .metrics import check_on_graph  # e.g. MPRT's layer count, before any work

            check_on_graph(metrics, self, options)
        layers = list(layers or self.layers)
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown:
            raise ValueError(f"layer '{unknown[0]}' is not in this graph; it has: {', '.join(self.layers)}")
        resolved = self._resolved(target, len(x))
        if any(isinstance(r, UnitTarget) for r in resolved):
            if seed is not None:
                raise ValueError("a unit target (channel:/neuron:/unit:) carries its own seed; give no seed with it")
            args = (methods, layers, topk, eigen_smooth, options, metrics, isolate_methods)
            return explain_units(self, x, resolved, *args)
        if seed is None and self.metadata.detection is not None:
            raise ValueError(
                "this is a detector's explainer graph: explain its boxes with Explainer.explain_detections (CLI: "
                "onnxcam detect), or give a seed over its raw output"
            )
        if seed is not None:
            seed = np.broadcast_to(np.asarray(seed, np.float32), (len(x), *self.score_shape))
        classes = _class_indices(resolved)
        seed = self._seeds(resolved, seed)
        out = self.run(x, np.zeros_like(classes) if self.binary else classes, seed)
        used = out.target_used
        if self.binary:  # the graph explained the logit; the negative side is −logit, so its gradient is −∂z/∂A
            used = np.where(used < 0, contract.TOP1, np.where(classes < 0, top1(out.scores, self.scores_kind), classes))
            sign = np.where(used == 0, -1.0, 1.0).astype(np.float32)
            flipped = {layer: g * sign.reshape(-1, *(1,) * (g.ndim - 1)) for layer, g in out.gradients.items()}
            out = replace(out, gradients=flipped)
        effective = class_seed(np.maximum(used, 0), self.scores_kind, self.score_shape)
        if seed is not None:
            effective[used < 0] = seed[used < 0]
        results = self._results(out.scores, used, effective, topk)
        self._find_clips(results, x, out, effective)
        for result, wanted in zip(results, resolved, strict=True):
            if isinstance(wanted, ClassSet) and result.class_index < 0 and result.label is None:
                result.label = " + ".join(self.label(k) or f"class {k}" for k in wanted.classes)
        request = MethodRequest(
            self,
            x,
            effective,
            out.scores,
            {layer: out.activations[layer] for layer in layers},
            {layer: out.gradients[layer] for layer in layers},
            options or {},
            scores_kind=self.scores_kind,
        )
        self._apply_methods(results, request, out, methods, layers, eigen_smooth, metrics, isolate_methods)
        for result in results:
            clipped = clip_warning(result.score_clip, result.maps)
            result.warnings.extend([clipped] if clipped else [])
        return results

    def _find_clips(self, results: list[Explanation], x: np.ndarray, out: GraphOutputs, seed: np.ndarray) -> None:
        """Set each result's ``score_clip`` (:mod:`onnxcam.score_clip`): from the run's gradients, or, for seeds that
        also weigh scores inside the range, from one more run seeded with their scores at a limit only."""
        limits = self.metadata.score_limits
        for n, result in enumerate(results):
            gradients = [g[n] for g in out.gradients.values()]
            result.score_clip = find_clip(out.scores[n], seed[n], gradients, limits)
        probes = {
            n: probe
            for n, result in enumerate(results)
            if result.score_clip is None and (probe := partial_probe(out.scores[n], seed[n], limits)) is not None
        }
        if not probes or not self.has_seed:
            return
        rows = list(probes)
        probed = self.run(x[rows], np.full(len(rows), contract.TOP1, np.int64), np.stack(list(probes.values())))
        for i, n in enumerate(rows):
            gradients = [g[i] for g in probed.gradients.values()]
            results[n].score_clip = find_clip(out.scores[n], probes[n], gradients, limits, partial=True)

    def _apply_methods(
        self,
        results: list[Explanation],
        request: MethodRequest,
        out: GraphOutputs,
        methods: Sequence[str],
        layers: Sequence[str],
        eigen_smooth: bool,
        metrics: Sequence[str],
        isolate_methods: bool,
    ) -> list[Explanation]:
        """Run each method on the batch of ``request`` and fill ``results`` (maps, raw maps, details, metrics)."""
        x = request.x
        size = (x.shape[3], x.shape[2])
        for name in methods:
            method = get_method(name)
            try:
                computed = self._method_maps(method, out, request, layers, size, eigen_smooth)
            except Exception as exc:  # with isolate_methods, one method's failure is that method's alone
                if not isolate_methods:
                    raise
                for result in results:
                    result.errors[method.name] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                continue
            for n, result in enumerate(results):
                result.maps[method.name] = computed.final[n]
                if computed.raw is not None:
                    result.raw[method.name] = {layer: computed.raw[layer][n] for layer in layers}
                if computed.attributions is not None:
                    result.attributions[method.name] = computed.attributions[n]
                if computed.details:
                    result.details[method.name] = {k: float(v[n]) for k, v in computed.details.items()}
        if metrics:
            from .metrics import evaluate_maps  # numpy-only, but loaded only when scores are asked for

            maps = {m: np.stack([r.maps[m] for r in results]) for m in results[0].maps} if results else {}
            scored = evaluate_maps(
                request.model,
                x,
                request.seed,
                maps,
                metrics,
                request.options,
                scores_kind=request.scores_kind,
                layers=layers,
            )
            for result, values in zip(results, scored, strict=True):
                result.metrics = values
        return results

    def _results(self, scores: np.ndarray, used: np.ndarray, seed: np.ndarray, k: int) -> list[Explanation]:
        """One :class:`Explanation` per image with its class, explained score ``Σ seed ⊙ scores``, its probability
        and the top-k classes (no maps yet)."""
        kind = self.scores_kind
        probs = class_probabilities(scores, kind)
        order, values = topk(scores, kind, k)
        explained = objective(scores, seed)
        results = []
        for n, c in enumerate(used.tolist()):
            if kind == RAW:
                probability = float("nan")
            elif c >= 0:
                probability = float(probs[n, c])
            else:
                probability = self._seed_probability(scores[n : n + 1], seed[n : n + 1])
            topk_n = [(int(i), self.label(int(i)), float(v)) for i, v in zip(order[n], values[n], strict=True)]
            results.append(
                Explanation(
                    class_index=c,
                    label=self.label(c),
                    score=float(explained[n]),
                    probability=probability,
                    topk=topk_n[: max(k, 0)],
                    seed=seed[n],
                )
            )
        return results

    def _seed_probability(self, scores: np.ndarray, seed: np.ndarray) -> float:
        """:func:`~onnxcam.scores.target_probability` of one seed row; NaN where it has none (signed weights)."""
        try:
            return float(target_probability(scores, seed, self.scores_kind)[0])
        except ScoresError:
            return float("nan")

    def _method_maps(
        self,
        method: CamMethod | ModelMethod,
        out: GraphOutputs,
        request: MethodRequest,
        layers: Sequence[str],
        size: tuple[int, int],
        eigen_smooth: bool,
    ) -> MethodMaps:
        """Run one method on the batch: the final ``[0, 1]`` maps at ``size = (W, H)`` and what they came from."""
        if isinstance(method, ModelMethod) and method.resolution == "input":
            attributions, details = method(request)
            reduce = method.reduce or (lambda a: np.abs(a).sum(axis=1))
            return MethodMaps(normalize(reduce(attributions)), None, attributions, details)
        raw: dict[str, np.ndarray] = {}
        details: dict[str, np.ndarray] = {}
        for layer in layers:
            if isinstance(method, ModelMethod):
                raw[layer], found = method(request, layer)
                details.update(found)
            else:
                grads = out.gradients[layer]
                weights = head_weights(grads) if method.needs_head_weights else None
                raw[layer] = method(out.activations[layer], grads, eigen_smooth=eigen_smooth, head_weights=weights)
        return MethodMaps(fuse([layer_map(raw[layer], size) for layer in layers]), raw, None, details)

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
        seed: np.ndarray | None = None,
        options: dict[str, Any] | None = None,
        metrics: Sequence[str] = (),
        keep_size: bool = False,
        aug_smooth: bool = False,
    ) -> list[Explanation]:
        """Explain images of any size (paths or arrays); maps at network resolution, see ``image_size``.

        ``images``: one image or a sequence (a list, or an ``N×H×W×c`` array). An array is an image as a person holds
        it, converted exactly as image files are: ``H×W`` or ``H×W×1`` grey, ``H×W×3`` RGB, ``H×W×4`` RGBA (alpha
        dropped), uint8 in 0–255 or float in [0, 1] (taken as such, never divided by 255 again: ``round(255·v)``
        as for float image files);
        grey and colour are converted to the model's channels (:attr:`preprocess` ``.channels``). A model with other
        than 1 or 3 channels takes ``H×W×C`` arrays only. Any other array (float outside [0, 1], other integer
        types, other shapes) raises :class:`onnxcam.pixels.PixelFormatError` naming the expected format.
        ``seed``, ``options`` and ``metrics`` as in :meth:`explain_arrays`.
        ``keep_size``: feed each image at its own size, unresized (one run per image; the graph must take any H×W,
        see :meth:`check_keep_size`; ``target`` and ``seed`` one for all or one per image). ``aug_smooth`` as in
        :meth:`explain_arrays`.
        """
        decoded = self._read(images)
        if keep_size:
            self.check_keep_size()
            per_image = list(target) if isinstance(target, (list, tuple)) else [target] * len(decoded)
            if len(per_image) != len(decoded):
                raise ValueError(f"{len(per_image)} targets for {len(decoded)} images")
            results = [
                self.explain_arrays(
                    preprocess(image, self.preprocess, keep_size=True)[None],
                    t,
                    methods,
                    layers,
                    topk,
                    eigen_smooth,
                    s,
                    options,
                    metrics,
                    aug_smooth=aug_smooth,
                )[0]
                for image, t, s in zip(decoded, per_image, self._seed_rows(seed, len(decoded)), strict=True)
            ]
        else:
            args = (methods, layers, topk, eigen_smooth, seed, options, metrics)
            results = self.explain_arrays(
                preprocess_batch(decoded, self.preprocess), target, *args, aug_smooth=aug_smooth
            )
        for result, image in zip(results, decoded, strict=True):
            result.image_size = image.shape[:2]
        return results

    def _seed_rows(self, seed: np.ndarray | None, n: int) -> list[np.ndarray | None]:
        """``seed`` ``[*S]`` (one for all) or ``[n, *S]`` (one per image) as ``n`` rows ``[*S]`` (or ``None``s);
        raises ``ValueError`` (one line) for any other shape."""
        if seed is None:
            return [None] * n
        rows = np.asarray(seed, np.float32)
        if rows.shape == self.score_shape:
            return [rows] * n
        if rows.shape == (n, *self.score_shape):
            return list(rows)
        shape = "×".join(map(str, self.score_shape))
        raise ValueError(f"seed of shape {rows.shape} for {n} images: give [{shape}] (all) or [{n}×{shape}] (each)")

    def _decode(self, images: ImageLike | Sequence[ImageLike]) -> tuple[list[np.ndarray], np.ndarray]:
        """The decoded images and their preprocessed batch ``[N, C, H, W]``."""
        decoded = self._read(images)
        return decoded, preprocess_batch(decoded, self.preprocess)

    def _read(self, images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
        """The decoded images (paths read; arrays as given, converted later by :mod:`onnxcam.pixels`)."""
        single = isinstance(images, np.ndarray) and images.ndim in (2, 3)
        batch = [images] if isinstance(images, (str, Path)) or single else images
        refusal = files_refusal(self.preprocess.channels)
        if refusal is not None and any(isinstance(i, (str, Path)) for i in batch):
            raise PixelFormatError(refusal)
        return [read_image(i) if isinstance(i, (str, Path)) else i for i in batch]

    def explain_predicted(
        self, images: ImageLike | Sequence[ImageLike], threshold: float = 0.5, **kwargs: Any
    ) -> list[list[Explanation]]:
        """Explain every class each image is predicted to have, one :class:`Explanation` (map) per class.

        A class is predicted when its probability (:mod:`onnxcam.scores`: ``σ(logit)`` for a multi-label head)
        exceeds ``threshold``; an image with none gets ``[]``. ``kwargs`` as :meth:`explain_arrays` (no ``target``).
        """
        decoded, x = self._decode(images)
        per_image = self.explain_predicted_arrays(x, threshold, **kwargs)
        for explanations, image in zip(per_image, decoded, strict=True):
            for result in explanations:
                result.image_size = image.shape[:2]
        return per_image

    def explain_detections(self, images: ImageLike | Sequence[ImageLike], **kwargs: Any) -> list[Detections]:
        """A detector's boxes per image with one map per box and method, and EigenCAM per image
        (:func:`onnxcam.detection.explain_detections`: ``methods``, ``confidence``, ``nms_iou``, ``match_iou`` …)."""
        from .detection import explain_detections

        return explain_detections(self, images, **kwargs)

    def explain_predicted_arrays(self, x: np.ndarray, threshold: float = 0.5, **kwargs: Any) -> list[list[Explanation]]:
        """:meth:`explain_predicted` on a preprocessed batch ``x`` ``[N, 3, H, W]`` (one forward pass to choose)."""
        chosen = predicted_classes(self.scores(x), self.scores_kind, threshold)
        rows = np.repeat(np.arange(len(x)), [len(c) for c in chosen])
        flat = self.explain_arrays(x[rows], [int(c) for c in np.concatenate(chosen)], **kwargs) if len(rows) else []
        bounds = np.cumsum([0, *(len(c) for c in chosen)])
        return [flat[start:stop] for start, stop in itertools.pairwise(bounds)]
