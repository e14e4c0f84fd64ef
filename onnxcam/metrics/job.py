"""The batch job behind ``onnxcam evaluate``: explain images, score the maps, one JSON line per image.

Flow: check the options against the graph (before any work) → expand the inputs (:mod:`onnxcam.inputs`) → while
batch *k* is explained and scored, a thread pool decodes batch *k+1* (:func:`onnxcam.batch.decoded_batches`) →
explain the batch (:meth:`~onnxcam.explainer.Explainer.explain_arrays`) → score each method's maps
(:func:`~onnxcam.metrics.evaluate.evaluate_maps`) → append the images' lines to ``metrics.jsonl`` in input order.

Bad input never stops the job: an input that cannot be decoded, or a batch whose explanation or scoring fails,
becomes a ``status: "error"`` line and the job goes on. ``metrics.jsonl`` is rewritten from scratch by each run
(atomically emptied, then one whole line written and flushed per image).

Record (one JSON object per line)::

    input, status ("ok" | "error"), error (null | one line), class_index, label, probability,
    metrics {method: {metric: value}}, timings_ms {decode, explain, metrics}

``timings_ms.explain`` and ``timings_ms.metrics`` are the batch's times divided by the images it held.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import (
    BatchUsageError,
    Decoded,
    Job,
    check_graph_supports,
    check_takes_image_files,
    decoded_batches,
    default_workers,
    one_line,
    prepare_out_dir,
    resolve_class,
    resolve_layers,
    resolve_methods,
    resolve_metric_names,
)
from ..explainer import Explainer
from ..inputs import expand_inputs
from ..methods import get_method
from ..methods.options import check_options
from ..outputs import JsonLinesLog
from ..targets import ClassSet, Target
from ..units import UnitTarget, metric_access
from .base import check_on_graph, check_probabilities, get_metric, metric_options
from .evaluate import evaluate_maps
from .localisation import BOX

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class EvaluationOptions:
    """What to explain and how to score it. ``options``: parameters of the methods and the metrics together."""

    methods: tuple[str, ...] = ("gradcam",)
    metrics: tuple[str, ...] = ("deletion", "insertion")
    target: Target = None
    layers: tuple[str, ...] | None = None
    batch_size: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """:class:`EvaluationOptions` checked against one graph."""

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    target: int | ClassSet
    layers: tuple[str, ...]
    batch_size: int
    options: dict[str, Any]


@dataclass(frozen=True)
class EvaluationSummary:
    """How the job went; ``means[method][metric]``: the mean over the images scored (``None`` when there are none)."""

    total: int
    ok: int
    errors: int
    seconds: float
    results: Path
    means: dict[str, dict[str, float | None]]

    @property
    def success(self) -> bool:
        return self.errors == 0


def plan(options: EvaluationOptions, explainer: Explainer) -> Plan:
    """Check ``options`` against ``explainer``'s graph; every mistake raises :class:`BatchUsageError`."""
    check_takes_image_files(explainer)
    layers = resolve_layers(options.layers, explainer)
    if options.batch_size < 1:
        raise BatchUsageError(f"must be at least 1, got {options.batch_size}", "--batch-size")
    if not options.metrics:
        raise BatchUsageError("no metric given", "--metric")
    metrics = resolve_metric_names(options.metrics)
    target = resolve_class(options.target, explainer)
    check_metric_scores(metrics, explainer, target)
    methods = resolve_methods(options.methods)
    for name in methods:
        check_graph_supports(get_method(name), explainer, layers, target)
    try:
        checked = check_options(methods, metrics, options.options, explainer.preprocess.input_size)
        check_on_graph(metrics, explainer, checked)
    except (ValueError, ImportError) as exc:
        raise BatchUsageError(str(exc), "--option") from None
    return Plan(methods, metrics, target, layers, options.batch_size, checked)


def check_metric_scores(metrics: Sequence[str], explainer: Explainer, target: Any) -> None:
    """:func:`~onnxcam.metrics.base.check_probabilities` for ``target`` on ``explainer``, and no metric that cannot
    score a unit (``Metric.units``) for a unit target, as :class:`BatchUsageError` (``--metric``)."""
    what = f"the unit target {target.name}" if isinstance(target, UnitTarget) else f"{explainer.path.name} (raw scores)"
    refused = [m for m in metrics if isinstance(target, UnitTarget) and not get_metric(m).units]
    if refused:
        raise BatchUsageError(f"{', '.join(refused)} cannot score {what} yet: explain a class target", "--metric")
    try:
        check_probabilities(metrics, metric_access(explainer, target)[1], what)
    except ValueError as exc:
        raise BatchUsageError(str(exc), "--metric") from None


def base_record(path: Path, error: str | None, timings: dict[str, float]) -> dict[str, Any]:
    """The fields every line has (an error line keeps them, ``null`` or empty)."""
    return {
        "input": str(path),
        "status": "ok" if error is None else "error",
        "error": error,
        "class_index": None,
        "label": None,
        "probability": None,
        "metrics": {},
        "timings_ms": {key: round(value, 3) for key, value in timings.items()},
    }


def score_batch(explainer: Explainer, good: Sequence[Decoded], settings: Plan) -> tuple[list[dict[str, Any]], str]:
    """Explain and score decoded images: ``(records, "")``, or ``([], cause)`` when the batch failed.

    ``settings.options`` are this batch's (:func:`batch_settings`)."""
    x = np.stack([d.x for d in good])
    started = time.perf_counter()
    metric_keys = {o.name for o in metric_options()}
    method_options = {k: v for k, v in settings.options.items() if k not in metric_keys}
    try:
        explanations = explainer.explain_arrays(
            x, settings.target, settings.methods, settings.layers, topk=1, options=method_options
        )
    except Exception as exc:  # onnxruntime or a method failing on this batch: mark it, go on
        return [], f"inference failed: {one_line(exc)}"
    explained = time.perf_counter()
    seed = np.stack([e.seed for e in explanations])
    maps = {m: np.stack([e.maps[m] for e in explanations]) for m in settings.methods}
    try:
        model, kind = metric_access(explainer, settings.target)  # a unit target scores the unit's value
        values = evaluate_maps(model, x, seed, maps, settings.metrics, settings.options, kind, settings.layers)
    except Exception as exc:  # a metric failing on this batch (e.g. imputation): mark it, go on
        return [], f"metrics failed: {one_line(exc)}"
    per_image = {"explain": explained - started, "metrics": time.perf_counter() - explained}
    records = []
    for d, explanation, value in zip(good, explanations, values, strict=True):
        timings = {"decode": d.decode_ms, **{k: 1000 * v / len(good) for k, v in per_image.items()}}
        record = base_record(d.job.item.path, None, timings)
        record.update(
            class_index=explanation.class_index,
            label=explanation.label,
            probability=explanation.probability,
            metrics=value,
        )
        records.append(record)
    return records, ""


def check_boxes(settings: Plan, total: int) -> None:
    """``pointing_box`` holds one box for every image or one per input of the run (``4·total`` numbers); else
    :class:`BatchUsageError` (``--option``), before any image is read."""
    if "pointing_game" not in settings.metrics:
        return
    count = len(settings.options.get(BOX.name, ()))
    if count not in (4, 4 * total):
        raise BatchUsageError(
            f"pointing_box needs x0,y0,x1,y1 (input pixels; one box for every image) or one box per input, "
            f"4·{total} = {4 * total} numbers in input order; got {count}",
            "--option",
        )


def batch_settings(settings: Plan, positions: Sequence[int], total: int) -> Plan:
    """``settings`` for the inputs at ``positions`` (0-based, in the run's input order) of ``total``: per-input
    ``pointing_box`` values cut to those inputs' boxes."""
    box = settings.options.get(BOX.name, ())
    if len(box) == 4 or len(box) != 4 * total:
        return settings
    mine = tuple(v for p in positions for v in box[4 * p : 4 * p + 4])
    return replace(settings, options={**settings.options, BOX.name: mine})


def batch_records(
    explainer: Explainer, batch: Sequence[Decoded], settings: Plan, first: int = 0, total: int = 0
) -> list[dict[str, Any]]:
    """The records of one decoded batch, in input order: decode errors, a batch failure, or scored images.

    ``first``: the position of the batch's first input in the run, of ``total`` inputs (per-input options)."""
    good = [d for d in batch if d.error is None]
    positions = [first + i for i, d in enumerate(batch) if d.error is None]
    settings = batch_settings(settings, positions, total)
    scored, cause = score_batch(explainer, good, settings) if good else ([], "")
    ok = iter(scored)
    records = []
    for d in batch:
        failure = d.error if d.error is not None else cause
        records.append(base_record(d.job.item.path, failure, {"decode": d.decode_ms}) if failure else next(ok))
    return records


def mean_table(records: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]) -> dict:
    """``{method: {metric: mean}}`` over the ok records' finite values (``None`` where there are none)."""
    means: dict[str, dict[str, float | None]] = {}
    for method in methods:
        means[method] = {}
        for metric in metrics:
            values = [r["metrics"][method][metric] for r in records if r["status"] == "ok"]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            means[method][metric] = float(np.mean(finite)) if finite else None
    return means


def format_table(means: dict[str, dict[str, float | None]], count: int) -> str:
    """The summary printed by ``onnxcam evaluate``: one row per metric, one column per method."""
    methods = list(means)
    metrics = list(next(iter(means.values()), {}))
    labels = [f"{m} ({'higher' if get_metric(m).higher_is_better else 'lower'} is better)" for m in metrics]
    first = max([len("metric"), *map(len, labels)])
    widths = [max(10, len(m)) for m in methods]
    lines = [f"{'metric':<{first}}  " + "  ".join(f"{m:>{w}}" for m, w in zip(methods, widths, strict=True))]
    for metric, label in zip(metrics, labels, strict=True):
        cells = [means[m][metric] for m in methods]
        text = ["n/a" if v is None else f"{v:.4f}" for v in cells]
        lines.append(f"{label:<{first}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(text, widths, strict=True)))
    lines.append(f"(means over {count} image{'s' if count != 1 else ''})")
    return "\n".join(lines)


def run_evaluation(
    explainer: Explainer,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: EvaluationOptions | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EvaluationSummary:
    """Explain and score every image of ``inputs`` (files, directories, globs) into ``out_dir/metrics.jsonl``.

    Usage mistakes raise :class:`BatchUsageError` before any image is read or any file written; ``on_result`` is
    called once per input, in input order; ``on_start(total)`` once the inputs are expanded.
    """
    settings = plan(options or EvaluationOptions(), explainer)
    out = prepare_out_dir(out_dir)
    started = time.perf_counter()
    jobs = [Job(item, str(item.path), {}) for item in expand_inputs(inputs, exclude=[out])]
    check_boxes(settings, len(jobs))
    if on_start is not None:
        on_start(len(jobs))
    try:
        log = JsonLinesLog(out / METRICS_FILE, [])
    except OSError as exc:
        raise BatchUsageError(f"cannot write {out / METRICS_FILE} ({exc.strerror or exc})", "--out") from None
    records: list[dict[str, Any]] = []
    with log, ThreadPoolExecutor(default_workers(), thread_name_prefix="onnxcam-decode") as pool:
        first = 0
        for batch in decoded_batches(pool, jobs, settings.batch_size, explainer.preprocess):
            for record in batch_records(explainer, batch, settings, first, len(jobs)):
                log.append(record)
                records.append(record)
                if on_result is not None:
                    on_result(record)
            first += len(batch)
    ok = sum(r["status"] == "ok" for r in records)
    means = mean_table(records, settings.methods, settings.metrics)
    return EvaluationSummary(len(records), ok, len(records) - ok, time.perf_counter() - started, log.path, means)
