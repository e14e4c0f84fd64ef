"""``--out FILE`` of the commands that write one picture (``visualize``, ``maps``): checked before any work."""

from __future__ import annotations

from pathlib import Path

import click
import cv2


def check_image_out(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """click callback: ``value`` must name an image format OpenCV writes (``.png``, ``.jpg``, …) in an existing
    folder; else a usage error (exit status 2) naming the option, the cause and the way out."""
    if not cv2.haveImageWriter(value):
        suffix = Path(value).suffix or "no extension"
        raise click.BadParameter(f"{value}: cannot write an image with {suffix}; end the name with .png", ctx, param)
    folder = Path(value).parent
    if not folder.is_dir():
        raise click.BadParameter(f"{value}: the folder {folder} does not exist; create it first", ctx, param)
    return value


#: The ``--out/-o FILE`` option of a command that writes one picture, checked by :func:`check_image_out`.
image_out_option = click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    callback=check_image_out,
    help="Where to write the PNG.",
)
