"""Dense detection outputs: read a detector's raw prediction tensor as :class:`onnxcam.contract.Detection`.

A detector's pre-NMS output is ``[N, 4 + K, A]`` (``yolov8``: YOLOv8/v11) or ``[N, A, 5 + K]`` (``yolov5``:
YOLOv5/v7). The layout is declared (``--task detect --detect-layout …``) or detected where unambiguous: a rank-3
output ``[N, D, A]`` with ``5 ≤ D < A`` and class rows in ``[0, 1]`` reads as ``yolov8``; ``[N, A, D]`` (YOLOv5,
or a transposed YOLOv8) must be declared. The explainer graph's ``scores`` become that tensor flattened, ``[N, D·A]``,
so the contract's seed (``y = Σ seed ⊙ scores``) and the verifiers work unchanged; the runtime
(:mod:`onnxcam.detection`) reshapes them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam import contract

from . import large_protos
from .assemble import OutputError
from .box_gradients import freeze_reshapes
from .source_batch import declared_batch

TASKS = ("classify", "detect")


class DetectionLayoutError(OutputError):
    """The output does not fit the declared (or any) detection layout."""


def sample_output(forward: onnx.ModelProto, input_shape: tuple[int, int, int]) -> np.ndarray:
    """``scores`` of one onnxruntime run on a seeded standard-normal ``[1, *input_shape]`` input (shape inference
    leaves a detector's anchor count symbolic once the batch is)."""
    session = large_protos.session(forward, outputs=[helper.make_empty_tensor_value_info(contract.SCORES)])
    rows = declared_batch(forward) or 1  # a source kept at its fixed batch runs that many
    x = np.random.default_rng(0).standard_normal((rows, *input_shape)).astype(np.float32)
    return session.run([contract.SCORES], {contract.INPUT: x})[0]


def refuse_nms(forward: onnx.ModelProto) -> None:
    """Refuse an output computed through ``NonMaxSuppression`` (post-processed boxes have no per-anchor gradient)."""
    producers = {o: n for n in forward.graph.node for o in n.output}
    todo, seen = [contract.SCORES], set()
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "NonMaxSuppression":
            raise DetectionLayoutError(
                f"the model's output comes after NonMaxSuppression ('{node.name}'): onnxcam explains a detector's raw "
                "prediction tensor; export the model without NMS (e.g. Ultralytics: nms=False) or choose the raw "
                "output with --scores-from"
            )
        todo.extend(node.input)


def resolve_layout(
    dims: tuple[int, ...], task: str | None, layout: str | None, sample: np.ndarray | None = None
) -> contract.Detection | None:
    """The :class:`~onnxcam.contract.Detection` of an output with per-image ``dims``; ``None`` for a classifier.

    ``task``: ``classify``, ``detect`` or ``None`` (detected); ``layout``: one of :data:`contract.DETECT_LAYOUTS` or
    ``None`` (detected). ``sample``: one image's output ``[*dims]``; undeclared, a ``[D, A]`` output reads as
    ``yolov8`` only when its class rows are probabilities in ``[0, 1]`` (YOLO exports apply the sigmoid), so a
    flattened feature map ``[C, h·w]`` is not taken for a detector. Raises :class:`DetectionLayoutError` when the
    dims fit no layout or are ambiguous.
    """
    if task is not None and task not in TASKS:
        raise DetectionLayoutError(f"--task {task}: unknown task; choose from {', '.join(TASKS)}")
    if layout is not None and layout not in contract.DETECT_LAYOUTS:
        raise DetectionLayoutError(
            f"--detect-layout {layout}: unknown layout; choose from {', '.join(contract.DETECT_LAYOUTS)}"
        )
    if task == "classify" or (task is None and layout is None and len(dims) != 2):
        return None
    if len(dims) != 2:
        raise DetectionLayoutError(
            f"the model's output has per-image shape {list(dims)}; a detector's raw output is [4 + classes, anchors] "
            "(--detect-layout yolov8) or [anchors, 5 + classes] (yolov5), before NMS"
        )
    rows, cols = dims
    if layout is None:
        if not 5 <= rows < cols or (sample is not None and not ((sample[4:] >= 0) & (sample[4:] <= 1)).all()):
            raise DetectionLayoutError(
                f"the model's output [N, {rows}, {cols}] is neither [N, classes] nor a dense [N, classes, H, W]; if it "
                "is a detector's raw output declare it: --task detect --detect-layout yolov8 ([N, 4 + classes, "
                "anchors]) or yolov5 ([N, anchors, 5 + classes])"
            )
        layout = "yolov8"
    detection = contract.Detection(layout, (rows, cols))
    if detection.classes < 1:
        need = "4 + classes" if layout == "yolov8" else "5 + classes"
        raise DetectionLayoutError(
            f"the model's output [N, {rows}, {cols}] has no class scores for --detect-layout {layout} ({need} per box)"
        )
    return detection


def as_detection(
    forward: onnx.ModelProto,
    input_shape: tuple[int, int, int],
    task: str | None,
    layout: str | None,
    log: Callable[[str], None],
) -> tuple[onnx.ModelProto, contract.Detection | None]:
    """``forward`` with ``scores`` flattened to ``[N, D·A]`` when its output is a detector's, and the layout read."""
    if task == "classify":
        return forward, None
    refuse_nms(forward)
    sample = sample_output(forward, input_shape)[0]
    detection = resolve_layout(sample.shape, task, layout, sample if sample.ndim == 2 else None)
    if detection is None:
        return forward, None
    log(
        f"detector output [N, {detection.shape[0]}, {detection.shape[1]}]: layout {detection.layout}"
        f"{' (declared)' if layout else ' (detected; declare --detect-layout to override)'}, "
        f"{detection.classes} classes × {detection.anchors} anchors, explained before any NMS"
    )
    step = quantized_output_step(forward)
    if step is not None and step > 2 / 255:
        log(
            f"warning: the output is int8 with one scale for box coordinates and class scores: scores are rounded to "
            f"multiples of {step:.3g}, so boxes and classes differ from float32's (explained as they are); quantize "
            "with the decode after the last Conv kept float (quantize_static(..., nodes_to_exclude=[...]), as "
            "--precision int8 does)"
        )
    model = onnx.ModelProto()
    model.CopyFrom(forward)
    graph = model.graph
    raw = contract.SCORES + "/detection"
    for node in graph.node:
        node.output[:] = [raw if o == contract.SCORES else o for o in node.output]
        node.input[:] = [raw if i == contract.SCORES else i for i in node.input]
    flat = np.array([-1, detection.shape[0] * detection.shape[1]], np.int64)
    graph.initializer.append(numpy_helper.from_array(flat, "onnxcam/detection_flat"))
    graph.node.append(
        helper.make_node("Reshape", [raw, "onnxcam/detection_flat"], [contract.SCORES], name="onnxcam/detection")
    )
    for out in graph.output:
        if out.name == contract.SCORES:
            out.type.tensor_type.ClearField("shape")
    freeze_reshapes(model)  # the box run's empty batch (:mod:`.box_gradients`)
    return model, detection


def quantized_output_step(forward: onnx.ModelProto) -> float | None:
    """The quantization step of ``scores`` when a per-tensor ``DequantizeLinear`` writes them (through shape-only ops),
    else ``None``: a QDQ detector whose output ``Concat`` was quantized rounds its class scores to that step."""
    producers = {o: n for n in forward.graph.node for o in n.output}
    constants = {t.name: t for t in forward.graph.initializer}
    node = producers.get(contract.SCORES)
    while node is not None and node.op_type in ("Reshape", "Transpose", "Identity", "Flatten", "Squeeze", "Unsqueeze"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in constants:
        return None
    scale = numpy_helper.to_array(constants[node.input[1]])
    return float(scale) if scale.size == 1 else None
