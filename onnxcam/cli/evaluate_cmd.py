"""``onnxcam evaluate MODEL INPUTS...``: faithfulness metrics of the maps, per image and on average (no torch)."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from .. import progress
from ..batch import BatchUsageError, open_explainer, parse_list, resolve_methods
from ..metrics import available_metrics, metric_options
from ..metrics.job import EvaluationOptions, format_table, run_evaluation
from ..providers import CHOICES
from .common import OPTION_HELP as METHOD_OPTION_HELP
from .common import method_option, parse_options, target_option, usage_error


def _shown(default: object) -> str:
    values = default if isinstance(default, tuple) else (default,)
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


OPTION_HELP = "; ".join(f"{o.name}: {o.help} [{_shown(o.default)}]" for o in metric_options())


@click.command(epilog=METHOD_OPTION_HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@method_option
@click.option(
    "--metric",
    default="deletion,insertion",
    show_default=True,
    help=f"Metric(s), comma-separated, or all: {', '.join(available_metrics())}.",
)
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@target_option
@click.option(
    "--layer", "layers", multiple=True, help="Layer to explain (repeatable) [all layers of the graph, fused]."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per run.")
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method or metric parameter (repeatable; the methods' options are listed below); an unknown key is an "
    f"error. Metric parameters: {OPTION_HELP}.",
)
@click.option("--provider", type=click.Choice(CHOICES), default="auto", show_default=True, help="Execution provider.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--quiet", "-q", is_flag=True, help="No per-image lines, progress bars or summary (errors are printed).")
def evaluate(
    model: str,
    inputs: tuple[str, ...],
    method: str,
    metric: str,
    out_dir: str,
    target: str,
    layers: tuple[str, ...],
    batch_size: int,
    option_pairs: tuple[str, ...],
    provider: str,
    threads: int | None,
    quiet: bool,
) -> None:
    """Score the maps of each method with faithfulness metrics: one JSON line per image in --out/metrics.jsonl and
    the mean per method and metric on stdout.

    INPUTS are image files, directories (searched recursively for images) and glob patterns. Exit status 0 when
    every input was scored, 1 when any failed (each failure also gets one line on stderr), 2 on bad usage. Each
    image gets a line on stderr as it is scored, and a progress bar runs on a terminal (not with -q).
    """
    progress.enable(progress.wanted(quiet))
    try:
        options = EvaluationOptions(
            methods=resolve_methods(parse_list(method)),
            metrics=parse_list(metric),
            target=target,
            layers=layers or None,
            batch_size=batch_size,
            options=parse_options(option_pairs),
        )
        explainer = open_explainer(model, provider, threads)
        if not quiet:
            click.echo(f"onnxcam: {model} on {explainer.provider}", err=True)
        reporter = _Reporter(quiet)
        try:
            summary = run_evaluation(
                explainer, inputs, out_dir, options, on_result=reporter.result, on_start=reporter.start
            )
        finally:
            reporter.bar.close()
    except BatchUsageError as exc:
        raise usage_error(exc) from None
    click.echo(format_table(summary.means, summary.ok))
    if not quiet:
        click.echo(
            f"{summary.ok} ok, {summary.errors} failed of {summary.total} inputs in {summary.seconds:.1f} s; "
            f"results in {summary.results}",
            err=True,
        )
    sys.exit(0 if summary.success else 1)


def image_line(record: dict[str, Any]) -> str:
    """The stderr line of one scored image: ``path: label (p%): method metric=value …``."""
    name = record["label"] if record["label"] is not None else f"class {record['class_index']}"
    values = "; ".join(
        f"{method} "
        + " ".join(
            f"{metric}={value:.4f}" if value is not None else f"{metric}=n/a" for metric, value in scores.items()
        )
        for method, scores in record["metrics"].items()
    )
    p = record["probability"]
    shown = f" ({p:.1%})" if p is not None and math.isfinite(p) else ""  # a unit or raw score has none
    return f"{record['input']}: {name}{shown}: {values}"


class _Reporter:
    """Per-image lines and errors on stderr, and the per-image bar (:mod:`onnxcam.progress`)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = progress.bar(0, "evaluating")

    def start(self, total: int) -> None:
        self.bar.close()
        self.bar = progress.bar(total, "evaluating")

    def result(self, record: dict[str, Any]) -> None:
        if record["status"] == "error":
            progress.echo(f"error: {record['input']}: {record['error']}", err=True)
        elif not self.quiet:
            progress.echo(image_line(record), err=True)
        self.bar.update(1)
