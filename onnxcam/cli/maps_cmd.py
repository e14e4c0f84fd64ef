"""``onnxcam maps MODEL IMAGE``: a grid of a layer's top-k feature maps for one image; ``--filters``: the first
convolution's filters (:mod:`onnxcam.feature_maps`)."""

from __future__ import annotations

import click

from .common import target_option
from .image_out import image_out_option, write_out


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", default=None, help="Layer of the graph [its first].")
@click.option("--top", type=click.IntRange(min=1), default=16, show_default=True, help="Channels to show.")
@click.option(
    "--by",
    type=click.Choice(["activation", "gradient"]),
    default="activation",
    show_default=True,
    help="Rank channels by mean activation or by Grad-CAM weight (mean gradient of the target).",
)
@target_option
@click.option(
    "--filters", is_flag=True, help="Show the first convolution's filters (no IMAGE; needs the onnx package)."
)
@image_out_option
def maps(
    model: str, image: str | None, layer: str | None, top: int, by: str, target: str, filters: bool, out: str
) -> None:
    """Write a grid of LAYER's top channels for IMAGE (each min-max normalised, captioned with its index), or with
    --filters the first convolution's filters as RGB tiles."""
    from ..explainer import Explainer
    from ..feature_maps import feature_map_grid, filter_grid, first_conv_weights, layer_outputs
    from ..images import read_image
    from ..preprocess import preprocess_batch
    from ..targets import TargetError

    if filters:
        _refuse_image_options(click.get_current_context())
    try:
        explainer = Explainer(model, provider="cpu")
        if filters:
            grid = filter_grid(first_conv_weights(model), explainer.preprocess.channel_order)
            summary = "filters of the first convolution"
        else:
            if image is None:
                raise click.UsageError("give an IMAGE (or --filters)")
            layer = layer or explainer.layers[0]
            if layer not in explainer.layers:
                raise click.BadParameter(
                    f"'{layer}' is not in this graph; it has: {', '.join(explainer.layers)}", param_hint="--layer"
                )
            x = preprocess_batch([read_image(image)], explainer.preprocess)
            activations, gradients = layer_outputs(explainer, x, layer, target)
            grid, channels = feature_map_grid(activations, gradients, top, by)
            summary = f"{layer}: channels {', '.join(map(str, channels.tolist()))} (by {by})"
    except (ValueError, TargetError, OSError) as exc:
        raise click.ClickException(str(exc).strip().splitlines()[0]) from None
    write_out(out, grid)
    click.echo(f"wrote {out}: {summary}")


def _refuse_image_options(ctx: click.Context) -> None:
    """With ``--filters``, a usage error naming IMAGE and the feature-map options given: the filters are the same
    for every image, so they would be ignored."""
    given = [
        p.human_readable_name if isinstance(p, click.Argument) else p.opts[0]
        for p in ctx.command.params
        if p.name in ("image", "layer", "top", "by", "target")
        and ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT
    ]
    if given:
        raise click.UsageError(
            f"--filters shows the first convolution's weights, the same for every image, so {', '.join(given)} would "
            f"be ignored: drop {'it' if len(given) == 1 else 'them'}, or drop --filters for the image's feature maps"
        )
