"""The production batch job behind ``onnxcam explain``: many images in, heat maps and one JSON line per image out.

Flow: validate the options against the graph (:func:`prepare`, before any work) → expand the inputs and keep this
shard's (:mod:`onnxcam.inputs`) → plan one :class:`Job` per input with its artefact names → with ``resume``, skip the
done ones → while batch *k* runs on onnxruntime, a small thread pool decodes and preprocesses batch *k+1* and writes the
artefacts of batch *k−1* (atomically) → append each image's JSON line to ``results.jsonl``, in input order. The
planning and the log (:func:`run_jobs`) are shared with the Ray engine (:mod:`onnxcam.ray_engine`).

Bad input never stops the job: an input that cannot be decoded, a batch whose inference fails, an artefact that cannot
be written, each becomes a ``status: "error"`` line, and the job goes on. ``results.jsonl`` holds exactly one line per
input of *this* run: at the start, every line but those of the inputs skipped as done (``resume``) is dropped — lines
of inputs run again, and lines of an earlier command's inputs (a glob that matched nothing, a file since removed) —
and the artefacts those dropped lines name are deleted, so the folder holds exactly this run's results. Files the log
never named (anything else in the folder) are left alone.

Kill-safe (SIGKILL at any moment, then the same command with ``resume``): an input's line is appended (and flushed;
``fsync`` once per batch) only after all its artefacts are in place, so a line always means finished work. On resume,
an input is done when its last line says ``ok`` and its artefacts exist and are not empty; a line cut short by the
kill is dropped, artefacts without a line are redone (overwritten atomically), and the temporary files the killed run
left for this run's outputs are deleted. The log itself is reset by an atomic whole-file replace. With ``--shard I/N``
the log is ``results.I-of-N.jsonl``, so shards can share one output directory.

Record (one JSON object per line; artefact paths are file names relative to the output directory)::

    input, name, status ("ok" | "error"), error (null | one line), image_size [H, W], class_index, label,
    probability, score, topk [{index, label, probability}], layers, methods {method: {stats, overlay, npy} or
    {error}}, grid, timings_ms {decode, inference_cam, write}, artefact_size [H, W], warnings [one line each]

A method that fails on an image fails alone: its entry in ``methods`` is ``{"error": cause}``, the line's status is
``error`` and its ``error`` names the method, and the other methods' artefacts are written. Artefacts (overlays with
a caption strip naming the class and probability, ``.npy`` maps, grids) are at the original size with the longer side
capped at ``max_side`` (``artefact_size``); ``image_size`` is the file's own size.

``timings_ms.inference_cam`` is the batch's inference + CAM time divided by the images it held.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .contract import Preprocess, activation_name
from .explainer import Explainer, Explanation, head_weights
from .images import ImageError, load_image
from .inputs import InputItem, Shard, expand_inputs, select_shard
from .methods import CamMethod, ModelMethod, get_method
from .methods.options import check_options
from .model_file import ModelFileError
from .outputs import (
    JsonLinesLog,
    artefact_stem,
    inside,
    read_json_lines,
    remove_stale_temps,
    write_image,
    write_npy,
)
from .pixels import files_refusal
from .postprocess import blank_map_warning, map_stats
from .preprocess import preprocess
from .providers import ProviderError
from .scores import ScoresError
from .targets import ClassSet, Target, TargetError
from .units import UnitTarget
from .visual import method_grid, overlay, with_caption

RESULTS_FILE = "results.jsonl"
SAVE_KINDS = ("overlay", "npy", "grid")
MAX_ERROR_CHARS = 300
#: Longest side of the overlays, ``.npy`` maps and the image they are drawn on (pixels); larger images are decoded
#: and written at this size (the record keeps the original ``image_size``).
DEFAULT_MAX_SIDE = 4096
#: Map statistics of larger maps are computed on the map shrunk to this many pixels.
STATS_PIXELS = 2**22

OnResult = Callable[[dict[str, Any], bool], None]
Emit = Callable[[Sequence[dict[str, Any]]], None]


class BatchUsageError(ValueError):
    """Options or a model the job cannot run with; raised before any image is touched.

    ``param`` names the command-line parameter at fault (``--target``, ``MODEL``…) when there is one.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def default_workers() -> int:
    """Threads decoding and writing images: 2 to 4 (OpenCV releases the GIL while it decodes, resizes, encodes)."""
    return max(2, min(4, os.cpu_count() or 2))


@dataclass(frozen=True)
class BatchOptions:
    """What to compute and save. ``target``: ``None``/``"top1"``, a class index or a label of the graph.

    ``layers``: ``None`` = every layer of the graph, fused. ``save``: any of ``overlay``, ``npy``, ``grid``.
    ``workers``: threads decoding the next batch and writing the previous one while a batch runs.
    ``resume``: skip the inputs already done (see the module docstring). ``shard``: run only this part of the inputs.
    ``metrics``: faithfulness metrics scored per map; ``method_options``: parameters of the perturbation and
    input-gradient methods and of the metrics; ``max_pixels``: larger images are refused before decoding
    (default :data:`onnxcam.images.MAX_PIXELS`); ``max_side``: longest side of the artefacts (``None``: the original
    size; default :data:`DEFAULT_MAX_SIDE`), a JPEG being decoded at the smallest libjpeg scale that still gives it.
    ``keep_size``: images are not resized (one per run; the graph must take any H×W). ``aug_smooth``: every map
    averaged over pytorch-grad-cam's six test-time augmentations (:mod:`onnxcam.augment`; six times the cost).
    """

    methods: tuple[str, ...] = ("gradcam",)
    target: Target = None
    layers: tuple[str, ...] | None = None
    batch_size: int = 8
    save: tuple[str, ...] = ("overlay",)
    topk: int = 5
    alpha: float = 0.5
    eigen_smooth: bool = False
    resume: bool = False
    shard: Shard | None = None
    metrics: tuple[str, ...] = ()
    method_options: Mapping[str, Any] = field(default_factory=dict)
    max_pixels: int | None = None
    workers: int = field(default_factory=default_workers)
    max_side: int | None = DEFAULT_MAX_SIDE
    keep_size: bool = False
    aug_smooth: bool = False


@dataclass(frozen=True)
class Settings:
    """:class:`BatchOptions` checked against one graph: canonical method names, resolved class index, layers."""

    methods: tuple[str, ...]
    target: int | ClassSet
    layers: tuple[str, ...]
    save: frozenset[str]
    batch_size: int
    topk: int
    alpha: float
    eigen_smooth: bool
    resume: bool
    shard: Shard | None
    metrics: tuple[str, ...]
    method_options: Mapping[str, Any]
    max_pixels: int | None
    workers: int
    max_side: int | None = DEFAULT_MAX_SIDE
    feature_grid: tuple[int, int] = (1, 1)
    keep_size: bool = False
    aug_smooth: bool = False


@dataclass(frozen=True)
class Job:
    """One input and the file names of its artefacts (``overlay:<method>``, ``npy:<method>``, ``grid``)."""

    item: InputItem
    name: str
    artefacts: dict[str, str]


@dataclass
class Decoded:
    """A job after decoding: the RGB image (at most ``max_side``), its file's ``original_size`` ``(H, W)`` and the
    network input, or the reason there are none."""

    job: Job
    image: np.ndarray | None = None
    x: np.ndarray | None = None
    error: str | None = None
    decode_ms: float = 0.0
    original_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Summary:
    """How the job went; ``images_per_second`` counts the images explained (not the skipped ones)."""

    total: int
    ok: int
    errors: int
    skipped: int
    seconds: float
    results: Path

    @property
    def images_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def success(self) -> bool:
        return self.errors == 0


# ---------------------------------------------------------------------------------------------------------- planning


def parse_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a, b,,c"`` (or several such strings) → ``("a", "b", "c")``."""
    parts = [value] if isinstance(value, str) else list(value)
    return tuple(p.strip() for part in parts for p in part.split(",") if p.strip())


def resolve_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical registry names of ``names``, duplicates dropped; unknown names raise :class:`BatchUsageError`."""
    if not names:
        raise BatchUsageError("no CAM method given", "--method")
    try:
        return tuple(dict.fromkeys(get_method(n).name for n in names))
    except ValueError as exc:
        raise BatchUsageError(str(exc), "--method") from None


def resolve_save(kinds: Sequence[str]) -> frozenset[str]:
    """The artefact kinds to write; anything but ``overlay``, ``npy``, ``grid`` raises :class:`BatchUsageError`."""
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown:
        raise BatchUsageError(f"unknown kind '{unknown[0]}'; choose from {', '.join(SAVE_KINDS)}", "--save")
    return frozenset(kinds)


def resolve_layers(layers: Sequence[str] | None, explainer: Explainer) -> tuple[str, ...]:
    """``layers`` (``None``: every layer of the graph); one the graph lacks raises :class:`BatchUsageError`."""
    chosen = tuple(layers or explainer.layers)
    unknown = [layer for layer in chosen if layer not in explainer.layers]
    if unknown:
        raise BatchUsageError(
            f"layer '{unknown[0]}' is not in this graph; it has: {', '.join(explainer.layers)}", "--layer"
        )
    return chosen


def resolve_class(target: Target, explainer: Explainer) -> int | ClassSet:
    """The class index of ``target`` (``-1``: top-1) or a set of classes; a class the graph lacks raises
    :class:`BatchUsageError`."""
    try:
        return explainer.resolve_target(target)
    except (TargetError, ScoresError) as exc:
        raise BatchUsageError(str(exc), "--target") from None


def prepare(options: BatchOptions, explainer: Explainer) -> Settings:
    """Check ``options`` against ``explainer``'s graph; every mistake raises :class:`BatchUsageError`."""
    check_takes_image_files(explainer)
    layers = resolve_layers(options.layers, explainer)
    for name, value in (("--batch-size", options.batch_size), ("--topk", options.topk)):
        if value < 1:
            raise BatchUsageError(f"must be at least 1, got {value}", name)
    if not 0 <= options.alpha <= 1:
        raise BatchUsageError(f"must be in [0, 1], got {options.alpha}", "--alpha")
    target = resolve_class(options.target, explainer)
    if options.keep_size and not explainer.any_size:
        try:
            explainer.check_keep_size()
        except ValueError as exc:
            raise BatchUsageError(str(exc).partition(": ")[2], "--keep-size") from None
    methods = resolve_methods(options.methods)
    for name in methods:
        check_graph_supports(get_method(name), explainer, layers, target)
    metrics = resolve_metric_names(options.metrics)
    if metrics:
        from .metrics.job import check_metric_scores

        check_metric_scores(metrics, explainer, target)
    try:
        method_options = check_options(methods, metrics, options.method_options, explainer.preprocess.input_size)
        if metrics:
            from .metrics import check_on_graph

            check_on_graph(metrics, explainer, method_options)
    except (ValueError, ImportError) as exc:
        raise BatchUsageError(str(exc), "--option") from None
    boxes = len(method_options.get("pointing_box", ())) if "pointing_game" in metrics else 4
    if boxes != 4:  # batches, shards and resumed runs hold other images than the run's N: one box for all
        raise BatchUsageError(
            f"pointing_game needs pointing_box=x0,y0,x1,y1 (input pixels; one box for every image), got {boxes} "
            "numbers; for one box per image use onnxcam evaluate",
            "--option",
        )
    if options.max_side is not None and options.max_side < 1:
        raise BatchUsageError(f"must be at least 1, got {options.max_side}", "--max-side")
    return Settings(
        methods=methods,
        target=target,
        layers=layers,
        save=resolve_save(options.save),
        batch_size=1 if options.keep_size else options.batch_size,
        topk=options.topk,
        alpha=options.alpha,
        eigen_smooth=options.eigen_smooth,
        resume=options.resume,
        shard=options.shard,
        metrics=metrics,
        method_options=method_options,
        max_pixels=options.max_pixels,
        workers=max(1, options.workers),
        max_side=options.max_side,
        feature_grid=feature_grid(explainer, layers),
        keep_size=options.keep_size,
        aug_smooth=options.aug_smooth,
    )


def feature_grid(explainer: Explainer, layers: Sequence[str]) -> tuple[int, int]:
    """The largest ``(h, w)`` feature map of ``layers`` (sizes the graph leaves symbolic count as 1)."""
    sizes = [explainer.graph.output(activation_name(layer)).shape[2:4] for layer in layers]
    dims = [[d if isinstance(d, int) else 1 for d in size] for size in sizes if len(size) == 2]
    return (max((d[0] for d in dims), default=1), max((d[1] for d in dims), default=1))


def check_takes_image_files(explainer: Explainer) -> None:
    """Refuse (:class:`BatchUsageError`) a graph that image files cannot feed (other than 1 or 3 channels)."""
    refusal = files_refusal(explainer.preprocess.channels)
    if refusal is not None:
        raise BatchUsageError(refusal, "MODEL")


def check_graph_supports(
    method: CamMethod | ModelMethod, explainer: Explainer, layers: Sequence[str], target: object = None
) -> None:
    """Refuse a method whose input gradients or head graphs the graph was exported without, CAM on a layer not
    followed by global average pooling and a linear layer, and a head-graph method for a unit ``target``
    (``--method``)."""
    if isinstance(method, CamMethod) and method.needs_head_weights:
        check_linear_head(method.name, explainer, layers)
    if not isinstance(method, ModelMethod):
        return
    missing = [rule for rule in method.rules if rule not in explainer.metadata.input_gradients]
    if missing:
        raise BatchUsageError(
            f"{method.name} needs the '{missing[0]}' input gradient, which this graph lacks; "
            f"re-export it with --input-gradient {missing[0]}",
            "--method",
        )
    refusal = method.refusal(explainer, layers) if method.refusal is not None else None
    if refusal is not None:
        raise BatchUsageError(refusal, "--method")
    if method.needs_head and isinstance(target, UnitTarget):
        raise BatchUsageError(
            f"{method.name} runs head graphs, which end at the class scores, not at the unit {target.name}; "
            "use scorecam, gradcam or another method",
            "--method",
        )
    headless = [layer for layer in layers if method.needs_head and layer not in explainer.metadata.heads]
    if headless:
        raise BatchUsageError(
            f"{method.name} needs a head graph for layer '{headless[0]}', which this graph lacks "
            "(exported with --no-head, or the part after the layer reads earlier tensors)",
            "--method",
        )


def check_linear_head(name: str, explainer: Explainer, layers: Sequence[str]) -> None:
    """Refuse ``name`` (CAM) unless every layer is followed by global average pooling → linear.

    Decided from the graph by one probe run on a random input (fixed seed): after such a head, ``∂y/∂A = w^c/Z`` is
    the same at every position for *any* input, so a gradient that varies over positions proves the head is
    something else (:func:`onnxcam.explainer.head_weights`).
    """
    probe = np.random.default_rng(0).standard_normal((1, *explainer.input_shape)).astype(np.float32)
    out = explainer.run(probe, np.full(1, -1, np.int64))
    for layer in layers:
        try:
            head_weights(out.gradients[layer])
        except ValueError:
            raise BatchUsageError(
                f"{name} needs global average pooling → a linear layer right after layer '{layer}', and this graph "
                "has something else there (the gradient varies over positions); choose the layer before the pooling "
                "or use gradcam",
                "--method",
            ) from None


def resolve_metric_names(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of the metrics asked for; an unknown one raises :class:`BatchUsageError` (``--metric``)."""
    if not names:
        return ()
    from .metrics import resolve_metrics

    try:
        return resolve_metrics(names)
    except ValueError as exc:
        raise BatchUsageError(str(exc), "--metric") from None


def artefact_names(name: str, methods: Sequence[str], save: frozenset[str]) -> dict[str, str]:
    """File names of one input's artefacts: ``<name>.<method>.png``, ``<name>.<method>.npy``, ``<name>.grid.png``."""
    names = {f"{kind}:{m}": f"{name}.{m}.{ext}" for m in methods for kind, ext in (("overlay", "png"), ("npy", "npy"))}
    names = {key: value for key, value in names.items() if key.split(":")[0] in save}
    if "grid" in save:
        names["grid"] = f"{name}.grid.png"
    return names


def plan_jobs(items: Sequence[InputItem], settings: Settings) -> list[Job]:
    """One :class:`Job` per input item, named after its path (see :func:`onnxcam.outputs.artefact_stem`)."""
    jobs = []
    for item in items:
        name = artefact_stem(item.path)
        jobs.append(Job(item, name, artefact_names(name, settings.methods, settings.save)))
    return jobs


def results_name(shard: Shard | None) -> str:
    """The log's file name: ``results.jsonl``, or ``results.I-of-N.jsonl`` for shard ``I/N`` of ``N > 1``."""
    return RESULTS_FILE if shard is None or shard.count == 1 else f"results.{shard.index}-of-{shard.count}.jsonl"


def last_records(lines: Sequence[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """The last valid record of each name in ``lines`` (as :func:`~onnxcam.outputs.read_json_lines` returns them)."""
    return {r["name"]: r for _, r in lines if r is not None and isinstance(r.get("name"), str)}


def is_done(job: Job, last: dict[str, dict[str, Any]], out_dir: Path) -> bool:
    """``job``'s last record says ``ok`` and every artefact it would write exists and is not empty."""
    record = last.get(job.name)
    ok = record is not None and record.get("status") == "ok"
    return ok and all(_non_empty(inside(out_dir, f)) for f in job.artefacts.values())


def kept_lines(lines: Sequence[tuple[str, dict[str, Any] | None]], keep: set[str]) -> list[str]:
    """The JSON lines to keep at the start of a run: the last valid line of each input named in ``keep`` (the inputs
    skipped as done); every other line (inputs run again, inputs of an earlier command) is dropped."""
    last = {r["name"]: text for text, r in lines if r is not None and isinstance(r.get("name"), str)}
    return [text for name, text in last.items() if name in keep]


def recorded_artefacts(lines: Sequence[tuple[str, dict[str, Any] | None]], keep: set[str]) -> set[str]:
    """File names of the artefacts the log's records name (overlays, ``.npy`` maps, grids), except those of the
    inputs in ``keep``; names that are not one plain file name are left out."""
    names: set[str] = set()
    for _, record in lines:
        if record is None or record.get("name") in keep:
            continue
        entries = record.get("methods") if isinstance(record.get("methods"), dict) else {}
        files = [record.get("grid")]
        files += [e.get(kind) for e in entries.values() if isinstance(e, dict) for kind in ("overlay", "npy")]
        names.update(f for f in files if isinstance(f, str) and f and Path(f).name == f and f not in (".", ".."))
    return names


def remove_files(out_dir: Path, names: set[str]) -> None:
    """Delete the regular files ``names`` in ``out_dir`` (missing ones are fine)."""
    for name in names:
        path = inside(out_dir, name)
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------- records


def one_line(exc: BaseException, prefix: str = "") -> str:
    """A one-line cause for ``exc``: its first line (``prefix`` removed), at most 300 characters."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    return text.removeprefix(prefix)[:MAX_ERROR_CHARS]


def base_record(job: Job, status: str, error: str | None, timings: dict[str, float]) -> dict[str, Any]:
    """The fields every line has; an error line keeps them all, ``null`` or empty."""
    return {
        "input": str(job.item.path),
        "name": job.name,
        "status": status,
        "error": error,
        "image_size": None,
        "class_index": None,
        "label": None,
        "probability": None,
        "score": None,
        "topk": [],
        "layers": [],
        "methods": {},
        "grid": None,
        "timings_ms": {key: round(value, 3) for key, value in timings.items()},
    }


def error_record(job: Job, cause: str, timings: dict[str, float]) -> dict[str, Any]:
    """The line of an input that failed with ``cause``."""
    return base_record(job, "error", cause, timings)


def ok_record(
    job: Job,
    image_size: tuple[int, int],
    explanation: Explanation,
    stats: dict[str, dict[str, float]],
    layers: Sequence[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The line of an explained input; ``stats`` are the per-method :class:`~onnxcam.postprocess.MapStats`."""
    record = base_record(job, "ok", None, timings)
    record.update(
        image_size=list(image_size),
        class_index=explanation.class_index,
        label=explanation.label,
        probability=explanation.probability,
        score=explanation.score,
        topk=[{"index": i, "label": label, "probability": p} for i, label, p in explanation.topk],
        layers=list(layers),
        methods={
            method: {
                "stats": values,
                "overlay": job.artefacts.get(f"overlay:{method}"),
                "npy": job.artefacts.get(f"npy:{method}"),
                **({"details": explanation.details[method]} if method in explanation.details else {}),
                **({"metrics": explanation.metrics[method]} if method in explanation.metrics else {}),
            }
            for method, values in stats.items()
        },
        grid=job.artefacts.get("grid"),
    )
    return record


# ------------------------------------------------------------------------------------------------------------- stages


def decode(
    job: Job,
    spec: Preprocess,
    max_pixels: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    keep_size: bool = False,
) -> Decoded:
    """Read (no larger than ``max_side`` and the network input need, :func:`~onnxcam.images.load_image`) and
    preprocess one input (``keep_size``: not resized); any failure becomes ``Decoded.error`` (runs on the thread
    pool)."""
    started = time.perf_counter()
    if job.item.error is not None:
        return Decoded(job, error=job.item.error)
    try:
        loaded = load_image(job.item.path, max_pixels=max_pixels, max_side=max_side, min_size=spec.input_size)
        image = loaded.image
        x = preprocess(image, spec, keep_size)
    except ImageError as exc:
        return Decoded(job, error=one_line(exc, f"{job.item.path}: "), decode_ms=_ms(started))
    except Exception as exc:  # a decoder or resize failure on odd data must not stop the job
        return Decoded(job, error=f"cannot decode: {one_line(exc)}", decode_ms=_ms(started))
    return Decoded(job, image, x, decode_ms=_ms(started), original_size=loaded.original_size)


def decoded_batches(
    pool: ThreadPoolExecutor,
    jobs: Sequence[Job],
    batch_size: int,
    spec: Preprocess,
    max_pixels: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    keep_size: bool = False,
) -> Iterator[list[Decoded]]:
    """Batches of decoded jobs, in order; batch *k+1* is submitted to ``pool`` before batch *k* is handed out."""
    chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]

    def submit(chunk: Sequence[Job]) -> list[Future[Decoded]]:
        return [pool.submit(decode, j, spec, max_pixels, max_side, keep_size) for j in chunk]

    pending = submit(chunks[0]) if chunks else []
    for k in range(len(chunks)):
        current = pending
        pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
        yield [f.result() for f in current]


def explain_decoded(
    explainer: Explainer, decoded: Sequence[Decoded], settings: Settings
) -> tuple[list[Explanation] | None, str | None, float]:
    """Run the graph and the CAMs on the decoded images: ``(explanations, None, ms)`` or ``(None, cause, ms)``."""
    started = time.perf_counter()
    try:
        explanations = explainer.explain_arrays(
            np.stack([d.x for d in decoded]),
            settings.target,
            settings.methods,
            settings.layers,
            settings.topk,
            settings.eigen_smooth,
            options=dict(settings.method_options),
            metrics=settings.metrics,
            isolate_methods=True,
            aug_smooth=settings.aug_smooth,
        )
    except Exception as exc:  # onnxruntime or a CAM method failing on this batch: mark it, go on
        return None, f"inference failed: {one_line(exc)}", _ms(started)
    return explanations, None, _ms(started)


def original_size_map(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[0, 1]`` map at network resolution → float32 ``[H, W]`` in ``[0, 1]`` for ``size = (H, W)``."""
    height, width = size
    resized = cv2.resize(np.asarray(cam_map, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0, out=resized)


def stats_of(cam_map: np.ndarray) -> dict[str, float]:
    """:func:`~onnxcam.postprocess.map_stats` of one map; a map over :data:`STATS_PIXELS` is first shrunk to that
    many pixels (``INTER_AREA``), which bounds the float64 work space (~50 bytes per pixel)."""
    height, width = cam_map.shape
    if height * width > STATS_PIXELS:
        scale = (STATS_PIXELS / (height * width)) ** 0.5
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        cam_map = cv2.resize(cam_map, size, interpolation=cv2.INTER_AREA)
    return map_stats(cam_map)[0].to_dict()


def caption(explanation: Explanation) -> str:
    """What a map explains, for the caption strips: ``tabby cat (78.5%)``, ``class 3 (12.0%)`` or the seed's score."""
    if explanation.class_index < 0:
        return f"seed: score {explanation.score:.4g}"
    name = explanation.label if explanation.label is not None else f"class {explanation.class_index}"
    return f"{name} ({explanation.probability:.1%})"


def write_artefacts(
    job: Job, image: np.ndarray, explanation: Explanation, methods: Sequence[str], out_dir: Path, alpha: float
) -> dict[str, dict[str, float]]:
    """Write the overlays, ``.npy`` maps and grid ``job`` plans for ``methods`` (maps brought to the image's size one
    method at a time, so memory holds one full-size map); returns each method's map statistics."""
    text = caption(explanation)
    stats = {}
    for method in methods:
        cam_map = original_size_map(explanation.maps[method], image.shape[:2])
        if f"overlay:{method}" in job.artefacts:
            picture = with_caption(overlay(image, cam_map, alpha), f"{method}: {text}")
            write_image(inside(out_dir, job.artefacts[f"overlay:{method}"]), picture)
        if f"npy:{method}" in job.artefacts:
            write_npy(inside(out_dir, job.artefacts[f"npy:{method}"]), cam_map)
        stats[method] = stats_of(cam_map)
        del cam_map
    if "grid" in job.artefacts:
        maps = {m: explanation.maps[m] for m in methods}
        write_image(inside(out_dir, job.artefacts["grid"]), method_grid(image, maps, alpha=alpha, caption=text))
    return stats


def size_warnings(size: tuple[int, int], grid: tuple[int, int]) -> list[str]:
    """A warning when an image of ``size`` ``(H, W)`` is smaller than the feature ``grid`` ``(h, w)``: the map then
    has more cells than the image has pixels, and the network saw an upsampled image."""
    if size[0] >= grid[0] and size[1] >= grid[1]:
        return []
    return [
        f"image {size[1]}x{size[0]} is smaller than the feature grid {grid[1]}x{grid[0]}: the map's detail is the "
        "network's upsampling, not the image's"
    ]


def blank_warnings(stats: dict[str, dict[str, float]]) -> list[str]:
    """A warning per method whose map is 0 everywhere (``status`` stays ``ok``: the map is what the method
    computes)."""
    return [blank_map_warning(method) for method, values in stats.items() if values.get("max") == 0.0]


def finish(
    decoded: Decoded, explanation: Explanation, settings: Settings, out_dir: Path, inference_ms: float
) -> dict[str, Any]:
    """Bring one explanation to the artefact size, write its artefacts and return its record.

    A method that failed on this image (``explanation.errors``) gets ``{"error": cause}`` in ``methods`` and makes
    the line ``status: "error"`` naming it; the other methods' artefacts are written all the same.
    """
    started = time.perf_counter()
    image = decoded.image
    assert image is not None
    good = [m for m in settings.methods if m not in explanation.errors]
    timings = {"decode": decoded.decode_ms, "inference_cam": inference_ms}
    try:
        stats = write_artefacts(decoded.job, image, explanation, good, out_dir, settings.alpha)
    except (OSError, ValueError, cv2.error) as exc:
        return error_record(decoded.job, f"cannot write artefacts: {one_line(exc)}", {**timings, "write": _ms(started)})
    timings["write"] = _ms(started)
    size = decoded.original_size or image.shape[:2]
    record = ok_record(decoded.job, size, explanation, stats, settings.layers, timings)
    record["artefact_size"] = list(image.shape[:2])
    record["warnings"] = size_warnings(size, settings.feature_grid) + explanation.warnings + blank_warnings(stats)
    if explanation.errors:
        failed = [m for m in settings.methods if m in explanation.errors]
        record["status"] = "error"
        record["error"] = "; ".join(f"{m} failed: {explanation.errors[m]}" for m in failed)[:MAX_ERROR_CHARS]
        record["methods"].update({m: {"error": explanation.errors[m][:MAX_ERROR_CHARS]} for m in failed})
    return record


def process_batch(
    explainer: Explainer, batch: Sequence[Decoded], settings: Settings, out_dir: Path, pool: Executor
) -> list[Future[dict[str, Any]]]:
    """Records of one decoded batch, in input order: decode errors, inference errors or explained images.

    Inference runs here; bringing each map to the original size and writing the artefacts runs on ``pool``.
    """
    good = [d for d in batch if d.error is None]
    explanations, cause, ms = explain_decoded(explainer, good, settings) if good else ([], None, 0.0)
    per_image = ms / max(len(good), 1)
    explained = iter(explanations or [])
    records: list[Future[dict[str, Any]]] = []
    for d in batch:
        if d.error is not None:
            records.append(_resolved(error_record(d.job, d.error, {"decode": d.decode_ms})))
        elif cause is not None:
            records.append(_resolved(error_record(d.job, cause, {"decode": d.decode_ms, "inference_cam": per_image})))
        else:
            records.append(pool.submit(finish, d, next(explained), settings, out_dir, per_image))
    return records


# -------------------------------------------------------------------------------------------------------- entry point


def open_explainer(model: str | Path, provider: str = "auto", threads: int | None = None) -> Explainer:
    """:class:`Explainer` over ``model``; a missing file, a non-explainer graph or an unusable provider raise
    :class:`BatchUsageError`."""
    try:
        return Explainer(model, provider=provider, threads=threads)
    except ModelFileError as exc:
        raise BatchUsageError(str(exc), "MODEL") from None
    except ProviderError as exc:
        raise BatchUsageError(str(exc), "--provider") from None


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create the output directory (and its parents) when missing."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BatchUsageError(f"{path} exists and is not a directory", "--out") from None
    except OSError as exc:
        raise BatchUsageError(f"cannot create {path} ({exc.strerror or exc})", "--out") from None
    return path


def run_batch(
    model: Explainer | str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: BatchOptions | None = None,
    *,
    provider: str = "auto",
    threads: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: OnResult | None = None,
) -> Summary:
    """Explain every image of ``inputs`` (files, directories, globs) into ``out_dir``; see the module docstring.

    ``model``: an :class:`Explainer`, or a graph path opened with ``provider`` and ``threads``. ``on_start(total)``
    is called once the inputs are expanded; ``on_result(record, skipped)`` once per input (skipped inputs first, with
    their previous record; then the others in input order).
    Usage mistakes raise :class:`BatchUsageError` before any image is read or any file written.
    """
    explainer = model if isinstance(model, Explainer) else open_explainer(model, provider, threads)
    settings = prepare(options or BatchOptions(), explainer)

    def run(jobs: Sequence[Job], out: Path, emit: Emit) -> None:
        execute(explainer, jobs, settings, out, emit)

    return run_jobs(settings, inputs, out_dir, run, on_start=on_start, on_result=on_result)


def run_jobs(
    settings: Settings,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    engine: Callable[[Sequence[Job], Path, Emit], None],
    *,
    on_start: Callable[[int], None] | None = None,
    on_result: OnResult | None = None,
) -> Summary:
    """Plan the job and keep its log; ``engine(jobs, out, emit)`` explains ``jobs`` and calls ``emit(records)``
    once per batch, each record after its artefacts are written.

    Expands ``inputs``, keeps this shard's, skips the done ones (``resume``), deletes stale temporary files, resets
    the log to the lines kept, then appends each emitted record (``fsync`` after each batch).
    """
    out = prepare_out_dir(out_dir)
    started = time.perf_counter()
    jobs = plan_jobs(select_shard(expand_inputs(inputs, exclude=[out]), settings.shard), settings)
    results = out / results_name(settings.shard)
    lines = read_json_lines(results)
    last = last_records(lines) if settings.resume else {}
    done = [job for job in jobs if is_done(job, last, out)]
    skip = {job.name for job in done}
    todo = [job for job in jobs if job.name not in skip]
    notify = on_result or (lambda record, skipped: None)
    if on_start is not None:
        on_start(len(jobs))
    for job in done:
        notify(last[job.name], True)
    try:
        remove_stale_temps(out, {results.name, *(name for job in jobs for name in job.artefacts.values())})
        remove_files(out, recorded_artefacts(lines, skip))
        log = JsonLinesLog(results, kept_lines(lines, skip))
    except OSError as exc:
        raise BatchUsageError(f"cannot write {results} ({exc.strerror or exc})", "--out") from None
    counts = {"ok": 0, "error": 0}

    def emit(records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            log.append(record)
            counts[record["status"]] += 1
            notify(record, False)
        log.sync()

    with log:
        engine(todo, out, emit)
    return Summary(len(jobs), counts["ok"], counts["error"], len(done), time.perf_counter() - started, log.path)


def execute(explainer: Explainer, jobs: Sequence[Job], settings: Settings, out_dir: Path, emit: Emit) -> None:
    """Run ``jobs`` batch by batch and ``emit`` each batch's records, in input order.

    While batch *k* runs on onnxruntime, the thread pool decodes batch *k+1* and writes the artefacts of batch *k−1*.
    """
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="onnxcam-io")
    writing: list[Future[dict[str, Any]]] = []
    try:
        batches = decoded_batches(
            pool,
            jobs,
            settings.batch_size,
            explainer.preprocess,
            settings.max_pixels,
            settings.max_side,
            settings.keep_size,
        )
        for batch in chain(batches, [None]):
            current = process_batch(explainer, batch, settings, out_dir, pool) if batch is not None else []
            if writing:
                emit([future.result() for future in writing])
            writing = current
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _resolved(record: dict[str, Any]) -> Future[dict[str, Any]]:
    future: Future[dict[str, Any]] = Future()
    future.set_result(record)
    return future


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _non_empty(path: Path) -> bool:
    """``path`` is a regular file holding at least one byte."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0
