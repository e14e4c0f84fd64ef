"""The production batch job behind ``onnxcam explain``: many images in, heat maps and one JSON line per image out.

Flow: validate the options against the graph (:func:`prepare`, before any work) → expand the inputs and keep this
shard's (:mod:`onnxcam.inputs`) → plan one :class:`Job` per input with its artefact names → with ``resume``, skip the
done ones → while batch *k* runs on onnxruntime, a small thread pool decodes and preprocesses batch *k+1* and writes the
artefacts of batch *k−1* (atomically) → append each image's JSON line to ``results.jsonl``, in input order. The
planning and the log (:func:`run_jobs`) are shared with the Ray engine (:mod:`onnxcam.ray_engine`).

Bad input never stops the job: an input that cannot be decoded, a batch whose inference fails, an artefact that cannot
be written, each becomes a ``status: "error"`` line, and the job goes on. ``results.jsonl`` holds exactly one line per
input: at the start, the lines of the inputs about to be processed are dropped from it (lines of other inputs, and of
skipped ones, stay), so a rerun replaces lines instead of piling them up.

Kill-safe (SIGKILL at any moment, then the same command with ``resume``): an input's line is appended (and flushed;
``fsync`` once per batch) only after all its artefacts are in place, so a line always means finished work. On resume,
an input is done when its last line says ``ok`` and its artefacts exist and are not empty; a line cut short by the
kill is dropped, artefacts without a line are redone (overwritten atomically), and the temporary files the killed run
left for this run's outputs are deleted. The log itself is reset by an atomic whole-file replace. With ``--shard I/N``
the log is ``results.I-of-N.jsonl``, so shards can share one output directory.

Record (one JSON object per line; artefact paths are file names relative to the output directory)::

    input, name, status ("ok" | "error"), error (null | one line), image_size [H, W], class_index, label,
    probability, score, topk [{index, label, probability}], layers, methods {method: {stats, overlay, npy}},
    grid, timings_ms {decode, inference_cam, write}

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

from .contract import Preprocess
from .explainer import Explainer, Explanation
from .images import ImageError, read_image
from .inputs import InputItem, Shard, expand_inputs, select_shard
from .methods import CamMethod, ModelMethod, get_method
from .model_file import ModelFileError
from .outputs import (
    JsonLinesLog,
    artefact_stem,
    inside,
    read_json_lines,
    remove_stale_temps,
    write_npy,
    write_png,
)
from .postprocess import map_stats
from .preprocess import preprocess
from .providers import ProviderError
from .targets import Target, TargetError, resolve_target
from .visual import method_grid, overlay

RESULTS_FILE = "results.jsonl"
SAVE_KINDS = ("overlay", "npy", "grid")
MAX_ERROR_CHARS = 300

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
    (default :data:`onnxcam.images.MAX_PIXELS`). ``keep_size``: images are not resized (one per run; the graph must
    take any H×W).
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
    keep_size: bool = False


@dataclass(frozen=True)
class Settings:
    """:class:`BatchOptions` checked against one graph: canonical method names, resolved class index, layers."""

    methods: tuple[str, ...]
    target: int
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
    keep_size: bool = False


@dataclass(frozen=True)
class Job:
    """One input and the file names of its artefacts (``overlay:<method>``, ``npy:<method>``, ``grid``)."""

    item: InputItem
    name: str
    artefacts: dict[str, str]


@dataclass
class Decoded:
    """A job after decoding: the original RGB image and the network input, or the reason there are none."""

    job: Job
    image: np.ndarray | None = None
    x: np.ndarray | None = None
    error: str | None = None
    decode_ms: float = 0.0


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


def resolve_class(target: Target, explainer: Explainer) -> int:
    """The class index of ``target`` (``-1``: top-1); a class the graph lacks raises :class:`BatchUsageError`."""
    try:
        return resolve_target(target, explainer.labels, explainer.classes)
    except TargetError as exc:
        raise BatchUsageError(str(exc), "--target") from None


def prepare(options: BatchOptions, explainer: Explainer) -> Settings:
    """Check ``options`` against ``explainer``'s graph; every mistake raises :class:`BatchUsageError`."""
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
        check_graph_supports(get_method(name), explainer, layers)
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
        metrics=resolve_metric_names(options.metrics),
        method_options=dict(options.method_options),
        max_pixels=options.max_pixels,
        workers=max(1, options.workers),
        keep_size=options.keep_size,
    )


def check_graph_supports(method: CamMethod | ModelMethod, explainer: Explainer, layers: Sequence[str]) -> None:
    """Refuse a method whose input gradients or head graphs the graph was exported without (``--method``)."""
    if not isinstance(method, ModelMethod):
        return
    missing = [rule for rule in method.rules if rule not in explainer.metadata.input_gradients]
    if missing:
        raise BatchUsageError(
            f"{method.name} needs the '{missing[0]}' input gradient, which this graph lacks; "
            f"re-export it with --input-gradient {missing[0]}",
            "--method",
        )
    headless = [layer for layer in layers if method.needs_head and layer not in explainer.metadata.heads]
    if headless:
        raise BatchUsageError(
            f"{method.name} needs a head graph for layer '{headless[0]}', which this graph lacks "
            "(exported with --no-head, or the part after the layer reads earlier tensors)",
            "--method",
        )


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


def kept_lines(lines: Sequence[tuple[str, dict[str, Any] | None]], rerun: set[str]) -> list[str]:
    """The JSON lines to keep at the start of a run: the last valid line of each input that is not run again."""
    last = {r["name"]: text for text, r in lines if r is not None and isinstance(r.get("name"), str)}
    return [text for name, text in last.items() if name not in rerun]


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


def decode(job: Job, spec: Preprocess, max_pixels: int | None = None, keep_size: bool = False) -> Decoded:
    """Read and preprocess one input; any failure becomes ``Decoded.error`` (runs on the thread pool)."""
    started = time.perf_counter()
    if job.item.error is not None:
        return Decoded(job, error=job.item.error)
    try:
        image = read_image(job.item.path, max_pixels=max_pixels)
        x = preprocess(image, spec, keep_size)
    except ImageError as exc:
        return Decoded(job, error=one_line(exc, f"{job.item.path}: "), decode_ms=_ms(started))
    except Exception as exc:  # a decoder or resize failure on odd data must not stop the job
        return Decoded(job, error=f"cannot decode: {one_line(exc)}", decode_ms=_ms(started))
    return Decoded(job, image, x, decode_ms=_ms(started))


def decoded_batches(
    pool: ThreadPoolExecutor,
    jobs: Sequence[Job],
    batch_size: int,
    spec: Preprocess,
    max_pixels: int | None = None,
    keep_size: bool = False,
) -> Iterator[list[Decoded]]:
    """Batches of decoded jobs, in order; batch *k+1* is submitted to ``pool`` before batch *k* is handed out."""
    chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    args = (spec, max_pixels, keep_size)
    pending: list[Future[Decoded]] = [pool.submit(decode, j, *args) for j in chunks[0]] if chunks else []
    for k in range(len(chunks)):
        current = pending
        pending = [pool.submit(decode, j, *args) for j in chunks[k + 1]] if k + 1 < len(chunks) else []
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
        )
    except Exception as exc:  # onnxruntime or a CAM method failing on this batch: mark it, go on
        return None, f"inference failed: {one_line(exc)}", _ms(started)
    return explanations, None, _ms(started)


def original_size_map(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[0, 1]`` map at network resolution → float32 ``[H, W]`` in ``[0, 1]`` for ``size = (H, W)``."""
    height, width = size
    resized = cv2.resize(np.asarray(cam_map, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def write_artefacts(job: Job, image: np.ndarray, maps: dict[str, np.ndarray], out_dir: Path, alpha: float) -> None:
    """Write the overlays, ``.npy`` maps and grid ``job`` plans (maps already at the image's size)."""
    for method, cam_map in maps.items():
        if f"overlay:{method}" in job.artefacts:
            write_png(inside(out_dir, job.artefacts[f"overlay:{method}"]), overlay(image, cam_map, alpha))
        if f"npy:{method}" in job.artefacts:
            write_npy(inside(out_dir, job.artefacts[f"npy:{method}"]), cam_map)
    if "grid" in job.artefacts:
        write_png(inside(out_dir, job.artefacts["grid"]), method_grid(image, maps, alpha=alpha))


def finish(
    decoded: Decoded, explanation: Explanation, settings: Settings, out_dir: Path, inference_ms: float
) -> dict[str, Any]:
    """Bring one explanation to the original size, write its artefacts and return its record."""
    started = time.perf_counter()
    image = decoded.image
    assert image is not None
    maps = {m: original_size_map(explanation.maps[m], image.shape[:2]) for m in settings.methods}
    timings = {"decode": decoded.decode_ms, "inference_cam": inference_ms}
    try:
        write_artefacts(decoded.job, image, maps, out_dir, settings.alpha)
    except (OSError, ValueError, cv2.error) as exc:
        return error_record(decoded.job, f"cannot write artefacts: {one_line(exc)}", {**timings, "write": _ms(started)})
    stats = {m: map_stats(cam_map)[0].to_dict() for m, cam_map in maps.items()}
    timings["write"] = _ms(started)
    return ok_record(decoded.job, image.shape[:2], explanation, stats, settings.layers, timings)


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
        log = JsonLinesLog(results, kept_lines(lines, {job.name for job in todo}))
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
            pool, jobs, settings.batch_size, explainer.preprocess, settings.max_pixels, settings.keep_size
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
