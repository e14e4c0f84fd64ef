"""``--out FILE`` of the commands that write one picture (``visualize``, ``maps``): checked before any work, written
atomically (:func:`onnxcam.outputs.write_image`)."""

from __future__ import annotations

from pathlib import Path

import click
import cv2
import numpy as np

from ..outputs import write_image


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


def write_out(out: str, pixels: np.ndarray) -> None:
    """Write the uint8 RGB or grey picture to ``out`` atomically (a crash leaves the previous file or none, never half
    a picture); a failure is a one-line :class:`click.ClickException` naming the file and the cause."""
    try:
        write_image(Path(out), pixels)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from None
