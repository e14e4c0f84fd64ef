"""``onnxcam compare A B INPUTS...``: do two explainer graphs (e.g. float32 and int8) explain images alike?"""

from __future__ import annotations

import sys

import click
import cv2
import numpy as np

from ..compare import agreement
from ..explainer import Explainer
from ..images import read_image
from ..inputs import expand_inputs
from ..providers import CHOICES


@click.command()
@click.argument("model_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("model_b", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--method", default="gradcam", show_default=True, help="CAM method whose maps are compared.")
@click.option(
    "--top", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True, help="Top-pixel fraction."
)
@click.option(
    "--min-correlation",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Exit 1 when any image's rank correlation is below this or the classes differ (a CI check).",
)
@click.option("--provider", type=click.Choice(CHOICES), default="auto", show_default=True, help="Execution provider.")
def compare(
    model_a: str,
    model_b: str,
    inputs: tuple[str, ...],
    method: str,
    top: float,
    min_correlation: float | None,
    provider: str,
) -> None:
    """Per image: the class each model predicts, the Spearman rank correlation of their maps (top-1 class of each)
    and the overlap of their top pixels; then the means. Exit status 0, or 1 with --min-correlation when an image
    falls below it or the two models predict different classes, or an input cannot be read."""
    a, b = Explainer(model_a, provider=provider), Explainer(model_b, provider=provider)
    failed = False
    rows = []
    click.echo(f"{'image':40s} {'class A':>8s} {'class B':>8s} {'spearman':>9s} top{top:.0%}")
    for item in expand_inputs(inputs):
        try:
            if item.error:
                raise ValueError(item.error)
            image = read_image(item.path)
            (ea,), (eb,) = a.explain(image, methods=[method]), b.explain(image, methods=[method])
        except Exception as exc:  # one line per unreadable input, as explain/evaluate do
            click.echo(f"{item.path}: {type(exc).__name__}: {exc}", err=True)
            failed = True
            continue
        for model, explanation in (("A", ea), ("B", eb)):  # e.g. an int8 score clipped: why a map is blank
            for line in explanation.warnings:
                click.echo(f"{item.path}: model {model}: {line}", err=True)
        map_a, map_b = ea.maps[method], eb.maps[method]
        if map_b.shape != map_a.shape:
            map_b = cv2.resize(map_b, map_a.shape[::-1], interpolation=cv2.INTER_LINEAR)
        row = agreement(ea.class_index, map_a, eb.class_index, map_b, top)
        rows.append(row)
        mark = "" if row.same_class else "  (classes differ)"
        name = str(item.path)[-40:]
        click.echo(f"{name:40s} {row.class_a:8d} {row.class_b:8d} {row.correlation:9.4f} {row.overlap:.3f}{mark}")
        if min_correlation is not None and (row.correlation < min_correlation or not row.same_class):
            failed = True
    if rows:
        same = np.mean([r.same_class for r in rows])
        rho = [r.correlation for r in rows]
        overlap = float(np.mean([r.overlap for r in rows]))
        click.echo(
            f"{len(rows)} images: class agreement {same:.1%}, spearman mean {np.mean(rho):.4f} (min {min(rho):.4f}), "
            f"top{top:.0%} overlap mean {overlap:.3f}"
        )
    sys.exit(1 if failed else 0)
