"""``onnxcam export SOURCE``: build an explainer graph (needs the export extra: torch + onnx)."""

from __future__ import annotations

import click

from ..contract import DETECT_LAYOUTS, RELU_RULES
from ..scores import KINDS
from .number_list import NumberList


@click.command()
@click.argument("source")
@click.option(
    "--layer", "layers", multiple=True, help="Layer to explain (module name; tensor name for .onnx). Repeatable."
)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Input height and width [224 224].")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset of the written graph (≥ 18).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="State dict to load (weights_only).")
@click.option(
    "--mean", cls=NumberList, default=None, metavar="M…", help="Normalisation mean on [0, 1]: one per channel, or one."
)
@click.option(
    "--std", cls=NumberList, default=None, metavar="S…", help="Normalisation std on [0, 1]: one per channel, or one."
)
@click.option("--labels", default=None, help="'imagenet', or a file with one class name per line.")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="PyTorch → ONNX tracer (torchscript is the legacy one, ~10× faster to export).",
)
@click.option(
    "--input-gradient",
    "input_gradients",
    default="none",
    show_default=True,
    help="Input gradients to add, by ReLU backward rule: standard (saliency, SmoothGrad, Integrated Gradients), "
    "guided (guided backprop, guided Grad-CAM), deconvnet; comma-separated, 'all' or 'none'.",
)
@click.option("--no-head", is_flag=True, help="Leave out the head graphs (the part after each layer; Ablation-CAM).")
@click.option("--no-verify", is_flag=True, help="Skip the gradient check against torch.autograd / finite differences.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Largest relative error allowed.")
@click.option(
    "--scores",
    "scores_kind",
    type=click.Choice(KINDS),
    default=None,
    help="What the model's scores are: logits (softmax), sigmoid (binary [N, 1] or multi-label), probabilities "
    "(already normalised), raw (regression, embeddings). Default: detected (a trailing Softmax → logits, Sigmoid or "
    "[N, 1] → sigmoid, else logits).",
)
@click.option(
    "--scores-from",
    default=None,
    metavar="NAME|INDEX",
    help="The output holding the scores when the model returns several (tuple index, dict key, attribute such as "
    "logits, ONNX output name). Default: the only [N, K] or [N, K, H, W] output.",
)
@click.option("--channels", type=click.IntRange(min=1), default=None, help="Input channels C [from the model].")
@click.option(
    "--channel-order",
    type=click.Choice(["RGB", "BGR"], case_sensitive=False),
    default=None,
    help="Colour order the model expects (3 channels) [RGB].",
)
@click.option("--scale", default=None, metavar="S", help="Pixel 0–255 → model range: 1/255 for [0, 1], 1 for 0–255.")
@click.option(
    "--input-layout",
    type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
    default=None,
    help="Layout of the model's input [read from an ONNX file's input shape; NCHW for PyTorch].",
)
@click.option(
    "--task",
    type=click.Choice(["classify", "detect"]),
    default=None,
    help="What the model does. detect: its output is a detector's raw (pre-NMS) prediction tensor, explained per "
    "box at run time. Default: detected (a [N, 4 + classes, anchors] output is a detector).",
)
@click.option(
    "--detect-layout",
    type=click.Choice(DETECT_LAYOUTS),
    default=None,
    help="A detector's output layout: yolov8 [N, 4 + classes, anchors] (YOLOv8/v11), yolov5 [N, anchors, "
    "5 + classes] (YOLOv5/v7; objectness then class scores). Default: detected where unambiguous (yolov8).",
)
@click.option(
    "--layer-layout",
    type=click.Choice(["nchw", "channels-last", "tokens"]),
    default=None,
    help="Layout of the layers' tensors when it cannot be inferred: [N, C, h, w], [N, h, w, C] or [N, T, C].",
)
@click.option("--layer-grid", nargs=2, type=int, default=None, metavar="H W", help="Token grid of a token layer.")
@click.option("--prefix-tokens", type=int, default=None, help="Tokens before the grid (class/register tokens).")
@click.option(
    "--in-graph",
    default="",
    metavar="METHOD[,METHOD]",
    help="Also compute these methods' final maps inside the graph (outputs cam:<method> [N, H, W] in [0, 1]; "
    "gradcam, gradcam++, xgradcam, hirescam, gradcamelementwise, layercam): any ONNX runtime gets a heat map.",
)
@click.option(
    "--unit-layer",
    default=None,
    metavar="LAYER",
    help="Also explain units of this layer ([N, C, h, w] or [N, K]): targets channel:C, neuron:C,Y,X, unit:K.",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "float16", "int8"]),
    default=None,
    help="Explain the model as deployed: converted to float16 (onnxconverter-common) or int8 QDQ (onnxruntime static "
    "quantization, needs --calibration) [float32; float16 for a float16 PyTorch model].",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Directory of typical input images setting the int8 quantization ranges (--precision int8).",
)
@click.option(
    "--bias-gradients",
    is_flag=True,
    help="Add the gradients FullGrad needs: b ⊙ ∂y/∂z of every conv/batch norm with a bias, and x ⊙ ∂y/∂x.",
)
@click.option(
    "--hvp",
    is_flag=True,
    help="Add ShapleyCAM's Hessian-vector products H·A per layer (the backward graph differentiated once more).",
)
def export(
    source: str, layers: tuple[str, ...], output: str, input_gradients: str, no_head: bool, **options: object
) -> None:
    """Rewrite SOURCE into an explainer graph with exact gradients.

    SOURCE is torchvision:<name>, <module or file.py>:<callable> returning an nn.Module, or an existing .onnx file.
    """
    try:
        from onnxcam_export.api import ExportError, export_source
    except ImportError as exc:
        raise click.ClickException(
            f"the export stage needs torch and onnx: pip install 'onnxcam[export]' ({exc})"
        ) from None
    try:
        rules = [r.strip() for r in input_gradients.split(",") if r.strip() and r.strip() != "none"]
        rules = list(RELU_RULES) if rules == ["all"] else rules
        in_graph = [m for m in str(options.pop("in_graph")).split(",") if m.strip()]
        export_source(
            source, list(layers), output, input_gradients=rules, heads=not no_head, in_graph=in_graph, **options
        )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
