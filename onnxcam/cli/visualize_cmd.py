"""``onnxcam visualize MODEL --target T``: the image that maximises a class or a unit (:mod:`onnxcam.feature_vis`)."""

from __future__ import annotations

import click

from .. import progress
from ..feature_vis import Settings
from .image_out import image_out_option, write_out

_DEFAULTS = Settings()


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--target",
    required=True,
    help="What to maximise: a class index or label, a comma list of classes (their sum), or with a graph exported "
    "with --unit-layer a unit: channel:C, neuron:C,Y,X, unit:K.",
)
@click.option("--steps", type=click.IntRange(min=1), default=_DEFAULTS.steps, show_default=True, help="Ascent steps.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.lr,
    show_default=True,
    help="Step size (per mean |gradient|).",
)
@click.option("--jitter", type=click.IntRange(min=0), default=_DEFAULTS.jitter, show_default=True, help="Pixels.")
@click.option(
    "--l2",
    type=click.FloatRange(0, 1, max_open=True),
    default=_DEFAULTS.l2,
    show_default=True,
    help="Decay towards grey per step.",
)
@click.option(
    "--blur", type=click.FloatRange(min=0), default=_DEFAULTS.blur_sigma, show_default=True, help="Gaussian blur sigma."
)
@click.option("--blur-every", type=click.IntRange(min=0), default=_DEFAULTS.blur_every, show_default=True)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Random seed (start image, jitter).")
@image_out_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def visualize(
    model: str,
    target: str,
    steps: int,
    lr: float,
    jitter: int,
    l2: float,
    blur: float,
    blur_every: int,
    seed: int,
    out: str,
    quiet: bool,
) -> None:
    """Write the image that maximises TARGET by regularised gradient ascent on the input (jitter, blur, L2 decay);
    the graph needs its input gradient (export with --input-gradient standard)."""
    from ..explainer import Explainer
    from ..feature_vis import objective_access
    from ..feature_vis import visualize as run
    from ..targets import TargetError

    progress.enable(progress.wanted(quiet))
    settings = Settings(steps, lr, jitter, l2, blur_every, blur, seed=seed)
    try:
        explainer = Explainer(model)
        name = objective_access(explainer, target)[2]
        result = run(explainer, target, settings)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
    except ValueError as exc:
        raise click.ClickException(str(exc).strip().splitlines()[0]) from None
    write_out(out, result.image)
    click.echo(f"wrote {out}: {name}, score {result.start:.4g} → {result.final:.4g} in {steps} steps")
