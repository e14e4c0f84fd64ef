"""Shared machinery of the faithfulness metrics: the ``Metric`` record, the registry, the request a metric reads.

A metric scores one explanation map per image by running the model again on perturbed inputs (forward passes only,
through :class:`onnxcam.methods.request.ModelAccess`). Metrics that share their perturbed inputs form a *family*: one
function ``(request, names) -> {name: [N] values}`` computes every metric of the family asked for, so e.g. the
confidence metrics cost one forward pass together, and ROAD's averaged and combined scores reuse one set of
imputations. docs/METHODS.md, "Faithfulness metrics", defines them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..methods.request import ModelAccess, objective
from ..scores import LOGITS, target_probability

#: ``(request, names of the family's metrics wanted) -> {name: per-image values [N]}``.
Family = Callable[["MetricRequest", frozenset[str]], dict[str, np.ndarray]]

SCORE_KINDS = ("logit", "probability")


@dataclass(frozen=True)
class Metric:
    """A registered metric: its ``name``, the ``family`` function computing it, and which direction is better.

    ``in_all``: ``--metric all`` includes it (not so for metrics needing what only the caller gives, e.g. the pointing
    game's object, or re-explaining with other weights, MPRT). ``probabilities``: it scores the target's probability
    whatever the options, so raw values (a regression head, a unit target) cannot have it. ``units``: it can score a
    unit target (MPRT explains again with class seeds only). ``check``: ``(explainer, checked options) -> None``, run
    before any image, raises ValueError in one line when the options cannot work on this graph (MPRT's layer count)."""

    name: str
    family: Family
    higher_is_better: bool
    in_all: bool = True
    probabilities: bool = False
    units: bool = True
    check: Callable[[Any, Mapping[str, Any]], None] | None = None


@dataclass(frozen=True)
class MetricOption:
    """A metric parameter: its ``default`` (whose type values are converted to), allowed ``choices`` (strings) or
    bounds ``[low, high]`` (numbers, or every element of a tuple)."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def convert(self, value: Any) -> Any:
        """``value`` as the default's type, checked; a bad value raises ValueError naming the option."""
        converted = convert_option(self.name, value, self.default)
        if isinstance(converted, str):
            if self.choices and converted not in self.choices:
                raise ValueError(f"option {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return converted
        numbers = converted if isinstance(converted, tuple) else (converted,)
        if not numbers:
            raise ValueError(f"option {self.name} is empty")
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        for number in numbers:
            if not low <= number <= high:
                bounds = f"at least {low:g}" if high == np.inf else f"in [{low:g}, {high:g}]"
                raise ValueError(f"option {self.name} must be {bounds}, got {number:g}")
        return converted


_OPTIONS: dict[str, MetricOption] = {}


def declare_option(option: MetricOption) -> MetricOption:
    """Make ``option`` known (a family declares the parameters it reads); returns it."""
    if option.name in _OPTIONS:
        raise ValueError(f"metric option {option.name!r} is already declared")
    _OPTIONS[option.name] = option
    return option


def metric_options() -> tuple[MetricOption, ...]:
    """Every declared metric parameter."""
    return tuple(_OPTIONS.values())


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with every metric parameter converted and checked (others, e.g. methods' ones, kept as given)."""
    return {k: _OPTIONS[k].convert(v) if k in _OPTIONS else v for k, v in (options or {}).items()}


METRIC_SCORE = declare_option(
    MetricOption(
        "metric_score",
        "logit",
        "what the confidence and ROAD metrics compare: logit (the explained y) or probability",
        choices=SCORE_KINDS,
    )
)


@dataclass(frozen=True)
class MetricRequest:
    """One batch of explanations to score.

    ``x``: preprocessed inputs ``[N, C, H, W]``; ``seed``: ``[N, *S]``, weights of the explained quantity
    ``y = Σ seed ⊙ scores`` (the one-hot of the class for class targets); ``maps``: ``[N, H, W]`` in ``[0, 1]``;
    ``scores``: the model's logits for ``x`` ``[N, *S]``; ``options``: metric parameters, as :func:`check_options`
    returns them; ``scores_kind``: what the scores are (:mod:`onnxcam.scores`), which defines the probabilities;
    ``method`` and ``layers``: what made the maps (metrics that explain again, MPRT, need them).
    """

    model: ModelAccess
    x: np.ndarray
    seed: np.ndarray
    maps: np.ndarray
    scores: np.ndarray
    options: Mapping[str, Any] = field(default_factory=dict)
    scores_kind: str = LOGITS
    method: str = ""
    layers: tuple[str, ...] = ()

    def option(self, option: MetricOption) -> Any:
        """The value of a declared parameter: given in ``options``, else its default."""
        return self.options.get(option.name, option.default)

    def target_values(self, scores: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """:func:`target_value` of the kind the ``metric_score`` option names."""
        return target_value(scores, seed, self.option(METRIC_SCORE), self.scores_kind)

    def probability(self, scores: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """:func:`probability` of the request's scores kind."""
        return probability(scores, seed, self.scores_kind)


def convert_option(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``: int, float, lower-case str, or a tuple of floats (``"10,20"``, ``[10, 20]``
    or one number)."""
    try:
        if isinstance(default, tuple):
            items = (
                value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
            )
            return tuple(float(v) for v in items)
        if isinstance(default, int):
            return int(str(value))
        if isinstance(default, float):
            return float(value)
        return str(value).lower()
    except (TypeError, ValueError):
        raise ValueError(f"option {name}: cannot read {value!r} as {type(default).__name__}") from None


def probability(scores: np.ndarray, seed: np.ndarray, scores_kind: str = LOGITS) -> np.ndarray:
    """The probability of the explained quantity per row, :func:`onnxcam.scores.target_probability`: for logits
    ``Σ seed ⊙ softmax(scores) / Σ seed`` (softmax over the class axis, per position of a dense output), for a sigmoid
    head ``σ(±logit)`` of the explained side; a class's probability for a one-hot seed, the mean over a region."""
    return target_probability(scores, seed, scores_kind)


def target_value(scores: np.ndarray, seed: np.ndarray, kind: str, scores_kind: str = LOGITS) -> np.ndarray:
    """The explained quantity per row: ``y = Σ seed ⊙ scores`` (``logit``) or :func:`probability`."""
    return objective(scores, seed) if kind == "logit" else probability(scores, seed, scores_kind)


_REGISTRY: dict[str, Metric] = {}


def check_probabilities(metrics: Sequence[str], scores_kind: str, what: str) -> None:
    """ValueError naming the metrics that score probabilities when ``what`` (e.g. ``target 'channel:3'``) explains
    ``raw`` values, which have none; checked before any image."""
    from ..scores import RAW

    wanting = [m for m in metrics if get_metric(m).probabilities]
    if scores_kind == RAW and wanting:
        others = ", ".join(m.name for m in _REGISTRY.values() if m.in_all and not m.probabilities)
        raise ValueError(
            f"{', '.join(wanting)} score{'s' if len(wanting) == 1 else ''} the target's probability, and {what} "
            f"explains raw values, which have none; use {others}"
        )


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry under its name (case, ``-`` and ``_`` insensitive); returns it."""
    key = _key(metric.name)
    if key in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    _REGISTRY[key] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The registered metric called ``name`` (``"road_combined"`` and ``"ROAD-combined"`` are the same)."""
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}") from None


def available_metrics() -> tuple[str, ...]:
    """Names of all registered metrics, in registration order (families together)."""
    return tuple(metric.name for metric in _REGISTRY.values())


def check_on_graph(metrics: Sequence[str], explainer: Any, options: Mapping[str, Any]) -> None:
    """Each of ``metrics``' :attr:`Metric.check` (once each) on ``explainer``'s graph with the checked ``options``,
    before any image; ValueError (ImportError for a missing extra) in one line."""
    for check in dict.fromkeys(get_metric(m).check for m in metrics):
        if check is not None:
            check(explainer, options)


def resolve_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of ``names``, duplicates dropped (``all`` = every metric whose ``in_all`` is set, plus the others
    named); unknown names raise ValueError."""
    if any(name.lower() == "all" for name in names):
        named = {get_metric(n).name for n in names if n.lower() != "all"}
        return tuple(m.name for m in _REGISTRY.values() if m.in_all or m.name in named)
    return tuple(dict.fromkeys(get_metric(name).name for name in names))
