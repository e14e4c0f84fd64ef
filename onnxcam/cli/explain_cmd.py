"""``onnxcam explain MODEL INPUTS...``: the batch job of :mod:`onnxcam.batch` on the command line (no torch)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from .. import progress
from ..batch import (
    DEFAULT_MAX_SIDE,
    SAVE_KINDS,
    BatchOptions,
    BatchUsageError,
    Summary,
    open_explainer,
    parse_list,
    resolve_methods,
    resolve_save,
    run_batch,
)
from ..inputs import Shard, parse_shard
from ..providers import CHOICES
from .common import OPTION_HELP, method_option, parse_options, target_option, usage_error

ENGINES = ("local", "ray")


def result_line(record: dict[str, Any], skipped: bool) -> str:
    """The stdout line of one input: its top-1 class and probability (and the explained class when different)."""
    top = record["topk"][0]
    line = f"{record['input']}: {_class_name(top)} ({top['probability']:.1%})"
    if record["class_index"] != top["index"]:
        line += f"; explained {_class_name({'index': record['class_index'], 'label': record['label']})}"
    return line + (" [skipped: done before]" if skipped else "")


def summary_line(summary: Summary) -> str:
    return (
        f"{summary.ok} ok, {summary.errors} failed, {summary.skipped} skipped of {summary.total} inputs "
        f"in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s); results in {summary.results}"
    )


class Reporter:
    """Prints per-input lines (stdout), errors and warnings (stderr) and a per-image progress bar (stderr, on a
    terminal and without ``-q`` only: :mod:`onnxcam.progress`)."""

    def __init__(self, quiet: bool, stack: contextlib.ExitStack) -> None:
        self.quiet = quiet
        self.stack = stack
        self.bar: Any = None

    def start(self, total: int) -> None:
        self.bar = progress.bar(total, "explaining")
        self.stack.callback(self.bar.close)

    def result(self, record: dict[str, Any], skipped: bool) -> None:
        if record.get("status") == "error":
            progress.echo(f"error: {record['input']}: {record['error']}", err=True)
        if record.get("topk") and not self.quiet:
            progress.echo(result_line(record, skipped))
        for warning in record.get("warnings") or []:
            progress.echo(f"warning: {record['input']}: {warning}", err=True)
        if self.bar is not None:
            self.bar.update(1)


class ShardType(click.ParamType):
    """``--shard I/N`` → :class:`~onnxcam.inputs.Shard` (a bad value is a usage error, exit status 2)."""

    name = "I/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Shard:
        if isinstance(value, Shard):
            return value
        try:
            return parse_shard(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def batch_options(
    method: str,
    target: str,
    layers: tuple[str, ...],
    batch_size: int,
    save: str,
    topk: int,
    alpha: float,
    eigen_smooth: bool,
    resume: bool,
    shard: Shard | None,
    metric: str,
    option_pairs: tuple[str, ...],
    max_megapixels: float,
    max_side: int,
    keep_size: bool = False,
    aug_smooth: bool = False,
) -> BatchOptions:
    """The :class:`BatchOptions` of the command-line values; unknown methods or save kinds raise BatchUsageError."""
    return BatchOptions(
        methods=resolve_methods(parse_list(method)),
        target=target,
        layers=layers or None,
        batch_size=batch_size,
        save=tuple(resolve_save(parse_list(save))),
        topk=topk,
        alpha=alpha,
        eigen_smooth=eigen_smooth,
        resume=resume,
        shard=shard,
        metrics=parse_list(metric),
        method_options=parse_options(option_pairs),
        max_pixels=round(max_megapixels * 1e6),
        max_side=max_side or None,
        keep_size=keep_size,
        aug_smooth=aug_smooth,
    )


@click.command(epilog=OPTION_HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@method_option
@target_option
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--layer", "layers", multiple=True, help="Layer to explain (repeatable) [all layers of the graph, fused]."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per run.")
@click.option("--provider", type=click.Choice(CHOICES), default="auto", show_default=True, help="Execution provider.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option(
    "--save", default="overlay", show_default=True, help=f"Artefacts, comma-separated: {', '.join(SAVE_KINDS)}."
)
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes listed per image.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heat-map opacity.")
@click.option("--eigen-smooth", is_flag=True, help="First-principal-component smoothing of the maps.")
@click.option(
    "--resume",
    "--skip-existing",
    "resume",
    is_flag=True,
    help="Skip inputs already done (ok line, artefacts present); rerun a killed job with the same arguments plus this.",
)
@click.option(
    "--shard",
    type=ShardType(),
    default=None,
    help="Run part I of N (0-based) of the inputs, split by a hash of each path; log in results.I-of-N.jsonl.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: this process; ray: a Ray Data actor pool (pip install 'onnxcam[ray]').",
)
@click.option("--address", default=None, help="Ray cluster to join (--engine ray) [a new local Ray instance].")
@click.option(
    "--actors", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors, one session each."
)
@click.option(
    "--metric",
    default="",
    help="Faithfulness metric(s) of each map, comma-separated (see `onnxcam evaluate --help`) [none].",
)
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of the chosen methods or metrics, e.g. masks=2000 (repeatable; the methods' options are listed "
    "below, the metrics' in `onnxcam evaluate --help`); an unknown key is an error.",
)
@click.option(
    "--max-megapixels",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Refuse larger images before decoding them (decompression bombs).",
)
@click.option("--quiet", "-q", is_flag=True, help="No per-image lines, progress bars or summary (errors are printed).")
@click.option(
    "--max-side",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_SIDE,
    show_default=True,
    help="Longest side of the overlays and maps in pixels; larger images are decoded and drawn at this size "
    "(0: the original size).",
)
@click.option(
    "--keep-size",
    is_flag=True,
    help="Feed each image at its own size, unresized (graphs exported with dynamic H/W; one image per run).",
)
@click.option(
    "--aug-smooth",
    is_flag=True,
    help="Average every map over pytorch-grad-cam's test-time augmentations (flip × 0.9/1/1.1; 6× the cost).",
)
def explain(
    model: str,
    inputs: tuple[str, ...],
    out_dir: str,
    provider: str,
    threads: int | None,
    engine: str,
    address: str | None,
    actors: int,
    quiet: bool,
    **values: Any,
) -> None:
    """Explain images with an explainer graph: heat maps in --out, one JSON line per image in results.jsonl.

    INPUTS are image files, directories (searched recursively for images) and glob patterns. Writes per image
    NAME.METHOD.png (overlay on the original image), NAME.METHOD.npy (the [0, 1] map at the original size) and
    NAME.grid.png, as --save asks; overlays and grids carry a caption naming the class and its probability.
    Exit status 0 when every input was explained, 1 when any failed, 2 on bad usage (checked before any image).

    A run without --resume starts the folder over: the artefacts the previous results.jsonl names are deleted and the
    log restarts (other files are left alone).

    A job killed at any moment loses nothing: rerun it with --resume. With --engine ray, --provider cuda gives each
    actor one GPU; the model, inputs and --out must be paths every node of the cluster sees.
    """
    progress.enable(progress.wanted(quiet))
    try:
        options = batch_options(**values)
        with contextlib.ExitStack() as stack:
            reporter = Reporter(quiet, stack)
            callbacks = {"on_start": reporter.start, "on_result": reporter.result}
            if engine == "ray":
                from ..ray_engine import explain_dataset

                if not quiet:
                    click.echo(f"onnxcam: {model} on Ray, {actors} actors", err=True)
                gpus = 1.0 if provider == "cuda" else 0.0
                summary = explain_dataset(
                    model,
                    inputs,
                    out_dir,
                    options,
                    address=address,
                    num_actors=actors,
                    num_gpus_per_actor=gpus,
                    threads=threads,
                    **callbacks,
                )
            else:
                explainer = open_explainer(model, provider, threads)
                if explainer.metadata.detection is not None:  # a detector: boxes, one map per box
                    from .detect_cmd import detect_images

                    methods, layers = options.methods, options.layers
                    done = detect_images(explainer, inputs, out_dir, methods, layers, alpha=options.alpha, quiet=quiet)
                    sys.exit(0 if done else 1)
                if not quiet:
                    click.echo(f"onnxcam: {model} on {explainer.provider}", err=True)
                summary = run_batch(explainer, inputs, out_dir, options, **callbacks)
    except BatchUsageError as exc:
        raise usage_error(exc) from None
    if not quiet:
        click.echo(summary_line(summary), err=True)
    sys.exit(0 if summary.success else 1)


def _class_name(entry: dict[str, Any]) -> str:
    return str(entry["label"]) if entry.get("label") is not None else f"class {entry['index']}"
