"""``onnxcam detect MODEL INPUTS...``: a detector's boxes with one map per box (``explain`` on a detector runs this)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from ..batch import BatchUsageError, open_explainer, parse_list, resolve_methods
from ..detection import Detections
from ..detection_visual import detection_overlay
from ..explainer import Explainer
from ..images import read_image
from ..inputs import expand_inputs
from ..outputs import json_line, write_image, write_npy
from ..providers import CHOICES
from ..visual import overlay
from .common import method_option, usage_error


def box_line(name: str, found: Detections) -> str:
    """The stdout line of one image: its boxes, best first (``label score [x0, y0, x1, y1]`` in network pixels)."""
    boxes = "; ".join(
        f"{b.label or f'class {b.class_index}'} {b.score:.2f} [{', '.join(f'{v:.0f}' for v in b.xyxy)}]"
        for b in found.boxes
    )
    return f"{name}: {len(found.boxes)} box{'es' * (len(found.boxes) != 1)}" + (f": {boxes}" if boxes else "")


def detect_images(
    explainer: Explainer,
    inputs: Sequence[str],
    out_dir: str | Path,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] | None = None,
    confidence: float = 0.25,
    nms_iou: float = 0.45,
    match_iou: float | None = None,
    alpha: float = 0.5,
    quiet: bool = False,
) -> bool:
    """Per image: ``NAME.detect.METHOD.png`` (boxes, each map renormalised in its box), ``NAME.boxes.METHOD.npy``
    (``[B, h, w]`` maps at network resolution, boxes' order), ``NAME.eigencam.png`` and a ``results.jsonl`` line
    (with ``warnings``: a box whose map is 0 everywhere, also on stderr).
    ``results.jsonl`` is written anew each run (one line per input of this run). Returns whether every input was
    explained."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = True
    with (out / "results.jsonl").open("w", encoding="utf-8") as log:
        for item in expand_inputs(inputs):
            record: dict = {"input": str(item.path)}
            try:
                if item.error:
                    raise ValueError(item.error)
                image = read_image(item.path)
                (found,) = explainer.explain_detections(
                    [image], methods=methods, confidence=confidence, nms_iou=nms_iou, match_iou=match_iou,
                    layers=layers,
                )  # fmt: skip
            except (OSError, ValueError) as exc:
                ok = False
                click.echo(f"error: {item.path}: {exc}", err=True)
                log.write(json_line({**record, "status": "error", "error": str(exc)}))
                continue
            stem = out / item.path.stem
            for name, maps in found.maps.items():
                picture = detection_overlay(image, found.boxes, maps, explainer.preprocess.input_size, alpha)
                write_image(stem.with_name(f"{stem.name}.detect.{name}.png"), picture)
                write_npy(stem.with_name(f"{stem.name}.boxes.{name}.npy"), maps.astype(np.float32))
            if found.eigencam is not None:
                write_image(stem.with_name(f"{stem.name}.eigencam.png"), overlay(image, found.eigencam, alpha))
            boxes = [
                {"xyxy": list(b.xyxy), "class_index": b.class_index, "label": b.label, "score": b.score}
                for b in found.boxes
            ]
            log.write(json_line({**record, "status": "ok", "boxes": boxes, "warnings": found.warnings}))
            if not quiet:
                click.echo(box_line(str(item.path), found))
            for warning in found.warnings:
                click.echo(f"warning: {item.path}: {warning}", err=True)
    return ok


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@method_option
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--layer", "layers", multiple=True, help="Layer to explain (repeatable) [all of the graph's, fused].")
@click.option("--confidence", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="Box threshold.")
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=0.45, show_default=True, help="NMS IoU threshold.")
@click.option(
    "--match-iou",
    type=click.FloatRange(0, 1),
    default=None,
    help="Explain the sum of the box's class score over every anchor whose box overlaps it by IoU ≥ this "
    "[only the box's own anchor].",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heat-map opacity.")
@click.option("--provider", type=click.Choice(CHOICES), default="auto", show_default=True, help="Execution provider.")
@click.option("--quiet", "-q", is_flag=True, help="No per-image lines.")
def detect(model: str, inputs: tuple[str, ...], method: str, layers: tuple[str, ...], provider: str, **kw) -> None:
    """Explain a detector (an explainer graph exported with --task detect): each kept box gets its own map.

    Boxes: the graph's raw output decoded, --confidence, then class-aware NMS (OpenCV). --method drise: D-RISE per
    box (1000 masked forwards per image). Writes per image NAME.detect.METHOD.png, NAME.boxes.METHOD.npy,
    NAME.eigencam.png and a line in results.jsonl.
    """
    try:
        explainer = open_explainer(model, provider)
        if explainer.metadata.detection is None:
            raise BatchUsageError("not a detector's explainer graph; export it with --task detect", "MODEL")
        names = parse_list(method)
        others = [n for n in names if n != "drise"]  # drise: per-box D-RISE (onnxcam.detection_rise), detectors only
        methods = (*(resolve_methods(others) if others else ()), *(("drise",) if "drise" in names else ()))
    except BatchUsageError as exc:
        raise usage_error(exc) from None
    sys.exit(0 if detect_images(explainer, inputs, methods=methods, layers=layers or None, **kw) else 1)
