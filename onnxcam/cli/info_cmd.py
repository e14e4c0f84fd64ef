"""``onnxcam info MODEL``: what an explainer graph holds."""

from __future__ import annotations

import click

from ..model_file import ModelFileError, describe


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
def info(model: str) -> None:
    """Print the contract of an explainer graph: inputs, outputs with shapes, layers, labels, preprocessing."""
    try:
        click.echo(describe(model))
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from None
