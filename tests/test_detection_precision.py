"""Deployed detectors: float16 and int8 (QDQ) YOLO-style detectors, converted at export (``--precision``) and brought
as ONNX files converted by onnxconverter-common / onnxruntime.quantization, explained box by box from the forward
pass that finds the boxes (the saved ``box_state``).

The model is ``test_detection.TinyYolo`` (seed 0, 64×64, two neck scales ``p3``/``p4``) with its class logits spread
as a trained head's (:func:`sharpened`). Each deployed export is verified at export time as a deployed classifier is
(float16: float64 finite differences of the same graph; int8: the straight-through-estimator reference, ≤ 1e-4).
Against the float32 export the deployed detector is compared on the boxes the user sees, on 8 random images: each
float32 box is matched to the deployed box of the same class with the highest IoU (``torchvision.ops.box_iou``,
independent of the code under test; a match needs IoU ≥ 0.5), and per matched box the Grad-CAM maps ([0, 1]) are
compared. Tolerances (measured in brackets): float16 — every box matched [517/517], maps ≤ 0.05 apart [≤ 0.001];
int8 (``--precision int8``, decode kept float, calibrated on 16 other images) — ≥ 90 % matched [96 %], Pearson ρ of
each matched box's maps ≥ 0.95 [min 0.979, median 0.990].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model, export_onnx_file
from test_detection import SIZE, TinyYolo, build
from torchvision.ops import box_iou

from onnxcam import contract
from onnxcam.cli import main
from onnxcam.explainer import Explainer

onnxconverter_common = pytest.importorskip("onnxconverter_common")

DETECT = {"confidence": 0.3, "nms_iou": 0.5, "eigencam": False}


def _write_images(folder: Path, seed: int, count: int) -> list[np.ndarray]:
    import cv2

    folder.mkdir()
    images = list(np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8))
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
    return images


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detprec")


@pytest.fixture(scope="module")
def photos(work: Path) -> list[np.ndarray]:
    """8 random images to explain (the calibration images are others)."""
    return _write_images(work / "photos", 5, 8)


@pytest.fixture(scope="module")
def calibration(work: Path) -> Path:
    _write_images(work / "calibration", 7, 16)
    return work / "calibration"


def sharpened() -> TinyYolo:
    """``TinyYolo`` (seed 0) with its class logits spread as a trained head's (weights × 30, bias −1): a few confident
    classes per anchor, instead of every score ≈ 0.5 where any rounding flips the class."""
    model = build(TinyYolo)
    with torch.no_grad():
        for conv in model.cls:
            conv.weight.mul_(30.0)
            conv.bias.fill_(-1.0)
    return model


def _export(work: Path, precision: str, calibration: Path | None = None) -> tuple[Path, list[str]]:
    log: list[str] = []
    path = work / f"{precision}.onnx"
    export_model(
        sharpened(),
        path,
        ["p3", "p4"],
        (SIZE, SIZE),
        exporter="torchscript",
        heads=False,
        log=log.append,
        precision=precision,
        calibration=calibration,
    )
    return path, log


@pytest.fixture(scope="module")
def float32(work: Path) -> Path:
    return _export(work, "float32")[0]


@pytest.fixture(scope="module")
def float16(work: Path) -> tuple[Path, list[str]]:
    return _export(work, "float16")


@pytest.fixture(scope="module")
def int8(work: Path, calibration: Path) -> tuple[Path, list[str]]:
    return _export(work, "int8", calibration)


def matched(reference, deployed) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(float32 map, deployed map)`` of every float32 box whose best same-class deployed box has IoU ≥ 0.5."""
    pairs = []
    for ref, dep in zip(reference, deployed, strict=True):
        if not ref.boxes or not dep.boxes:
            continue
        iou = box_iou(torch.tensor([b.xyxy for b in ref.boxes]), torch.tensor([b.xyxy for b in dep.boxes])).numpy()
        iou *= np.array([[a.class_index == b.class_index for b in dep.boxes] for a in ref.boxes])
        for i, j in enumerate(iou.argmax(1)):
            if iou[i, j] >= 0.5:
                pairs.append((ref.maps["gradcam"][i], dep.maps["gradcam"][j]))
    return pairs


def _explain(path: Path, photos: list[np.ndarray], **kwargs):
    return Explainer(path, provider="cpu").explain_detections(photos, **DETECT, **kwargs)


def _has_box_state(path: Path) -> bool:
    return any(o.name.startswith(contract.BOX_STATE_PREFIX) for o in onnx.load(str(path)).graph.output)


def test_float16_detector_verified_and_matches_float32(float32, float16, photos) -> None:
    """``--precision float16`` on a detector (its anchor grid is an integer ``Cast`` to float: blocked in the
    conversion): verified by float64 finite differences, the float16-vs-float64 figure logged, the box-axis backward
    kept on the saved state; boxes and per-box Grad-CAM maps match the float32 export's."""
    path, log = float16
    assert any(line.startswith("verified against float64 finite differences") for line in log), log
    agreement = next(line for line in log if line.startswith("float16 graph vs the same graph in float64"))
    assert float(agreement.split("gradients ")[1].split(",")[0]) < 1e-2, agreement
    assert any("from the forward that finds them" in line for line in log), log
    assert _has_box_state(path)
    reference, deployed = _explain(float32, photos), _explain(path, photos)
    pairs = matched(reference, deployed)
    assert len(pairs) >= 0.95 * sum(len(r.boxes) for r in reference) > 0
    assert max(float(np.abs(a - b).max()) for a, b in pairs) <= 0.05


@pytest.mark.slow
def test_int8_detector_verified_and_close_to_float32(float32, int8, photos) -> None:
    """``--precision int8 --calibration DIR``: verified against the STE reference, box axis on the saved state (its
    state runs through the QDQ graph's integer tensors); boxes matched and maps correlated with float32's."""
    path, log = int8
    assert any(line.startswith("verified against the straight-through estimator") for line in log), log
    assert any("from the forward that finds them" in line for line in log), log
    assert _has_box_state(path)
    reference, deployed = _explain(float32, photos), _explain(path, photos)
    pairs = matched(reference, deployed)
    assert len(pairs) >= 0.9 * sum(len(r.boxes) for r in reference) > 0
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in pairs if a.std() > 0 and b.std() > 0]
    assert len(correlations) >= 0.9 * len(pairs) and min(correlations) >= 0.95, min(correlations)


@pytest.mark.parametrize("precision", ["float16", pytest.param("int8", marks=pytest.mark.slow)])
def test_box_axis_equals_per_box_rows_on_deployed(precision, photos, request) -> None:
    """All boxes of an image from its one forward pass (the saved state) = one seeded row per box, on the deployed
    graph itself (maps ≤ 1e-3: float16 kernels may sum in another order)."""
    path, _ = request.getfixturevalue(precision)
    one = _explain(path, photos[:2], one_forward=True)
    rows = _explain(path, photos[:2], one_forward=False)
    for a, b in zip(one, rows, strict=True):
        assert [box.anchor for box in a.boxes] == [box.anchor for box in b.boxes]
        assert np.abs(a.maps["gradcam"] - b.maps["gradcam"]).max() <= 1e-3


def test_cli_explain_on_float16_detector(float16, photos, work) -> None:
    path, _ = float16
    out = work / "cli"
    args = ["explain", str(path), str(work / "photos" / "0.png"), "-o", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (found,) = Explainer(path, provider="cpu").explain_detections(photos[:1], eigencam=False)
    assert f"0.png: {len(found.boxes)} box" in result.output
    maps = np.load(out / "0.boxes.gradcam.npy")
    assert maps.shape == (len(found.boxes), SIZE, SIZE) and np.isfinite(maps).all()


# ONNX files converted by the user's tools


@pytest.fixture(scope="module")
def sources(work: Path, calibration: Path) -> dict[str, Path]:
    """TinyYolo as float32 ONNX (TorchScript exporter, dynamic batch), converted by onnxconverter-common (plainly, and
    with its ``Cast`` nodes blocked) and quantized by onnxruntime in QDQ format (per-channel, calibrated)."""
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from onnxcam.preprocess import preprocess_batch

    paths = {k: work / f"source_{k}.onnx" for k in ["fp32", "fp16", "fp16_blocked", "qdq"]}
    torch.onnx.export(
        sharpened(),
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(paths["fp32"]),
        input_names=["images"],
        output_names=["output0"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
    )
    model = onnx.load(str(paths["fp32"]))
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    onnx.save(float16.convert_float_to_float16(model), str(paths["fp16"]))
    onnx.save(float16.convert_float_to_float16(model, node_block_list=casts), str(paths["fp16_blocked"]))
    x = preprocess_batch(_write_images(work / "calibration_src", 7, 16), contract.Preprocess(input_size=(SIZE, SIZE)))

    class Reader:
        def __init__(self) -> None:
            self.it = iter([{"images": x[i : i + 1]} for i in range(len(x))])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quant_pre_process(str(paths["fp32"]), str(work / "prep.onnx"))
    quantize_static(
        str(work / "prep.onnx"),
        str(paths["qdq"]),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return paths


def test_converter_float16_file_with_float_casts_refused_in_one_line(sources) -> None:
    """onnxconverter-common leaves ``Cast(to=float)`` (the anchor grid) while declaring its output float16: the file
    does not load in onnxruntime. Refused in one line naming the Casts and the two ways out."""
    import onnxruntime as ort
    from onnxcam_export.float16_casts import Float16CastError

    with pytest.raises(Exception, match="Cast"):
        ort.InferenceSession(str(sources["fp16"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Float16CastError) as error:
        export_onnx_file(sources["fp16"], None, task="detect", log=lambda _: None)
    message = str(error.value)
    assert "\n" not in message and "Cast node(s) ('/Cast" in message
    assert "node_block_list" in message and "--precision float16" in message


@pytest.mark.parametrize("name", [pytest.param("fp16_blocked", marks=pytest.mark.slow), "qdq"])
def test_deployed_source_files_export_verified_with_box_state(sources, photos, work, name) -> None:
    """The float16 file (Casts blocked, float16 I/O) and the QDQ file: exported with --task detect, verified (finite
    differences / STE reference ≤ 1e-4), the box-axis backward kept on the saved state. float16: every float32 box
    matched, maps ≤ 0.05 apart. QDQ with the output Concat quantized too (one scale for pixels and scores, step
    0.24): the log warns, boxes differ (measured 60 % matched), the matched boxes' maps still correlate (ρ ≥ 0.95)."""
    explained, logs = {}, {}
    for kind in ("fp32", name):
        path = work / f"source_{kind}.explainer.onnx"
        logs[kind] = []
        if not path.exists():
            _, report = export_onnx_file(sources[kind], path, task="detect", heads=False, log=logs[kind].append)
            assert report is not None and report.worst <= 1e-4, report
        assert _has_box_state(path)
        explained[kind] = _explain(path, photos)
    pairs = matched(explained["fp32"], explained[name])
    boxes = sum(len(r.boxes) for r in explained["fp32"])
    if name == "fp16_blocked":
        assert len(pairs) == boxes > 0
        assert max(float(np.abs(a - b).max()) for a, b in pairs) <= 0.05
    else:
        assert any(line.startswith("warning: the output is int8 with one scale") for line in logs[name]), logs[name]
        assert len(pairs) >= 0.5 * boxes > 0
        correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in pairs if a.std() > 0 and b.std() > 0]
        assert len(correlations) >= 0.9 * len(pairs) and min(correlations) >= 0.95, min(correlations)


class StridedHead(torch.nn.Module):
    """A strided ``Slice`` (every other row, as SSD heads' box/class split) and a ``LeakyRelu`` before the output:
    their backward rules build constants shaped like the incoming gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.leaky_relu(self.head(torch.relu(self.conv(x))), 0.1)
        return y[:, ::2].mean((2, 3))


def test_float16_backward_constants_take_the_gradient_type(tmp_path: Path) -> None:
    """A rule's constant typed like a gradient (``like=ḡ``: not in the forward graph's inferred types) is float16 in
    a float16 graph (was float32: the checker refused the graph, e.g. SSDlite's strided Slice). Exported, verified
    by float64 finite differences."""
    torch.manual_seed(0)
    _, report = export_model(
        StridedHead().eval(), None, ["conv"], (16, 16), exporter="torchscript", log=lambda _: None, precision="float16"
    )
    assert report is not None and report.worst <= 1e-4, report
