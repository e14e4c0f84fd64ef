"""int8 QDQ graphs whose scores are quantized too (``quantize_static`` puts ``QuantizeLinear → DequantizeLinear``
on the logits, and on a trailing Softmax's or Sigmoid's output): which tensor is explained, and the clip of a
score at its quantization range (:mod:`onnxcam.score_clip`).

Small GapNets (random init, seed 0, 32×32) with four heads — logits, Softmax, multi-label Sigmoid, one binary logit —
exported by the TorchScript exporter and quantized by onnxruntime (QDQ, uint8 activations, MinMax calibration on 4
standard-normal images). Explained on 64 other standard-normal images: one of them (the binary head: four) scores
more than an int8 step beyond the calibrated range (5 steps), most lie inside. The reference for "clipped": the
deployed graph's float logits before their ``QuantizeLinear`` (onnxruntime, graph optimizations off) and that node's
scale and zero point: clipped where ``round(z/s) + zp`` lies beyond the integer range by more than one step, inside
where it lies a step within (the images in between are left out: fused int8 kernels may round them either way).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxcam_export.api import export_model, export_onnx_file
from small_models import GapNet

from onnxcam import compat
from onnxcam.explainer import Explainer

HEADS = {
    "logits": lambda: GapNet(),
    "softmax": lambda: torch.nn.Sequential(GapNet(), torch.nn.Softmax(1)),
    "sigmoid": lambda: torch.nn.Sequential(GapNet(), torch.nn.Sigmoid()),
    "binary": lambda: GapNet(1),
}
CALIBRATION = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
IMAGES = np.random.default_rng(1).standard_normal((64, 3, 32, 32)).astype(np.float32)


class _Calibration:
    """``CalibrationDataReader`` over :data:`CALIBRATION`, one image per batch."""

    def __init__(self) -> None:
        self.it = iter([{"images": CALIBRATION[i : i + 1]} for i in range(len(CALIBRATION))])

    def get_next(self) -> dict | None:
        return next(self.it, None)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each head's int8 QDQ ONNX file, and its explainer (``<head>.explainer.onnx``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    w = tmp_path_factory.mktemp("int8_scores")
    paths = {}
    for head, build in HEADS.items():
        torch.manual_seed(0)
        torch.onnx.export(
            build().eval(),
            (torch.randn(1, 3, 32, 32),),
            str(w / f"{head}.fp32.onnx"),
            input_names=["images"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
        quant_pre_process(str(w / f"{head}.fp32.onnx"), str(w / f"{head}.prep.onnx"))
        paths[head] = w / f"{head}.onnx"
        quantize_static(
            str(w / f"{head}.prep.onnx"),
            str(paths[head]),
            _Calibration(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        export_onnx_file(paths[head], paths[head].with_suffix(".explainer.onnx"), log=lambda _: None)
    return paths


def deployed_logits(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 file's logits: the dequantized output of the Gemm's ``QuantizeLinear``, ``[N, K]``; where the
    Gemm's float output ``z`` rounds beyond the integer range (``+1`` above, ``−1`` below, ``0`` a step or more
    inside, ``nan`` within a step of either end); and ``z/s + zp − q_max`` (clipped at the top above ½)."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    q = next(
        n
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in producers and producers[n.input[0]].op_type == "Gemm"
    )
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scale, zero = float(constants[q.input[1]]), constants[q.input[2]]
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in (q.input[0], dq.output[0])])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    z, logits = session.run(None, {"images": x})
    level = np.rint(z / scale) + int(zero)
    limits = np.iinfo(zero.dtype)
    over = z / scale + int(zero) - limits.max
    side = np.where(level > limits.max + 1, 1.0, np.where(level < limits.min - 1, -1.0, 0.0))
    side[
        ((level > limits.max - 1) & (level <= limits.max + 1)) | ((level < limits.min + 1) & (level >= limits.min - 1))
    ] = np.nan
    return logits, side, over


@pytest.mark.parametrize(("head", "kind"), [("softmax", "logits"), ("sigmoid", "sigmoid")])
def test_trailing_activation_after_int8_output_left_out(quantized: dict[str, Path], head: str, kind: str) -> None:
    """``quantize_static`` quantizes the Softmax's (Sigmoid's) output too: the exporter still finds the activation
    behind that Q/DQ pair and explains the deployed logits before it (exactly: same graph, same onnxruntime kernels up
    to 1 int8 step), not the probabilities as logits."""
    log: list[str] = []
    export_onnx_file(quantized[head], quantized[head].with_suffix(".again.onnx"), log=log.append)
    name = "Softmax" if head == "softmax" else "Sigmoid"
    assert f"scores: {kind} (the trailing {name} is left out: its input is explained)" in log
    explainer = Explainer(quantized[head].with_suffix(".explainer.onnx"), provider="cpu")
    logits, _, _ = deployed_logits(quantized[head], IMAGES)
    step = float(np.min(np.diff(np.unique(logits))))
    assert explainer.scores_kind == kind
    np.testing.assert_allclose(explainer.scores(IMAGES), logits, rtol=0, atol=1.01 * step)


@pytest.mark.parametrize(("head", "kind"), [("softmax", "logits"), ("sigmoid", "sigmoid")])
def test_pytorch_int8_export_explains_the_logits_before_the_activation(tmp_path: Path, head: str, kind: str) -> None:
    """``export_model(..., precision="int8")`` quantizes the whole forward graph, the Softmax/Sigmoid output
    included: the logits before it are explained, as for the float model."""
    torch.manual_seed(0)
    log: list[str] = []
    path = tmp_path / "m.onnx"
    export_model(
        HEADS[head]().eval(),
        path,
        None,
        (32, 32),
        exporter="torchscript",
        log=log.append,
        precision="int8",
        calibration=CALIBRATION,
    )
    name = "Softmax" if head == "softmax" else "Sigmoid"
    assert f"scores: {kind} (the trailing {name} is left out: its input is explained)" in log
    assert Explainer(path, provider="cpu").scores_kind == kind


@pytest.mark.parametrize("head", ["logits", "softmax", "sigmoid"])
def test_clipped_score_warns_naming_only_the_blank_maps(quantized: dict[str, Path], head: str) -> None:
    """Images whose explained (top-1) logit lies beyond the int8 range: Grad-CAM's map is blank and the warning
    names it; Score-CAM (forward passes only) still has a map and is not named, alone it gets no warning. Images a
    step or more inside the range: no warning. Both kinds of image occur."""
    explainer = Explainer(quantized[head].with_suffix(".explainer.onnx"), provider="cpu")
    _, side, _ = deployed_logits(quantized[head], IMAGES)
    results = explainer.explain_arrays(IMAGES, methods=("gradcam", "scorecam"))
    alone = explainer.explain_arrays(IMAGES, methods=("scorecam",))
    top = np.array([side[n, r.class_index] for n, r in enumerate(results)])
    assert (top == 1).any() and (top == 0).any(), top
    for n in np.flatnonzero(top == 1):
        (line,) = results[n].warnings
        assert results[n].maps["gradcam"].max() == 0 and results[n].maps["scorecam"].max() > 0
        assert "is clipped at the top" in line and "these maps are blank: gradcam;" in line, line
        assert results[n].score_clip is not None and results[n].score_clip.end == "top"
        assert alone[n].warnings == []
    for n in np.flatnonzero(top == 0):
        assert results[n].warnings == [] and results[n].score_clip is None


def test_aug_smooth_warns_only_when_the_averaged_map_is_blank(quantized: dict[str, Path]) -> None:
    """``aug_smooth``: the copies scaled by 0.9 (and flipped) may score inside the range, so the averaged Grad-CAM
    map of a clipped image is not blank there: the warning is given exactly when the averaged map is blank."""
    explainer = Explainer(quantized["logits"].with_suffix(".explainer.onnx"), provider="cpu")
    _, side, _ = deployed_logits(quantized["logits"], IMAGES)
    plain = explainer.explain_arrays(IMAGES, methods=("gradcam",))
    clipped = [n for n, r in enumerate(plain) if side[n, r.class_index] == 1]
    smoothed = explainer.explain_arrays(IMAGES[clipped], methods=("gradcam",), aug_smooth=True)
    blank = [r.maps["gradcam"].max() == 0 for r in smoothed]
    assert [bool(r.warnings) for r in smoothed] == blank
    assert not all(blank)  # some copy scored inside the range


def test_binary_negative_class_warning_names_the_negated_score(quantized: dict[str, Path]) -> None:
    """A single-logit head: the negative class explains ``−logit``; with the logit clipped, the warning gives the
    logit and says its negative is explained (the explanation's score is ``−logit``); the positive class's does
    not."""
    explainer = Explainer(quantized["binary"].with_suffix(".explainer.onnx"), provider="cpu")
    _, side, _ = deployed_logits(quantized["binary"], IMAGES)
    n = int(np.flatnonzero(side[:, 0] == 1)[0])
    (negative,) = explainer.explain_arrays(IMAGES[n : n + 1], target="negative", methods=("gradcam",))
    (positive,) = explainer.explain_arrays(IMAGES[n : n + 1], target="positive", methods=("gradcam",))
    hi = explainer.metadata.score_limits[1]
    assert negative.score == pytest.approx(-hi, rel=1e-6) and positive.score == pytest.approx(hi, rel=1e-6)
    assert negative.warnings[0].startswith(f"the score whose negative is explained ({hi:.6g}) is clipped at the top")
    assert positive.warnings[0].startswith(f"the explained score ({hi:.6g}) is clipped at the top")


def test_compat_cam_warns_on_a_clipped_score(quantized: dict[str, Path]) -> None:
    """The pytorch-grad-cam drop-in hands back bare maps: a blank map from a clipped score comes with a
    RuntimeWarning naming the input, and none for an input inside the range."""
    explainer = Explainer(quantized["logits"].with_suffix(".explainer.onnx"), provider="cpu")
    _, side, _ = deployed_logits(quantized["logits"], IMAGES)
    classes = [r.class_index for r in explainer.explain_arrays(IMAGES, methods=("eigencam",))]
    top = np.array([side[n, c] for n, c in enumerate(classes)])
    clipped, inside = int(np.flatnonzero(top == 1)[0]), int(np.flatnonzero(top == 0)[0])
    cam = compat.GradCAM(explainer)
    with pytest.warns(RuntimeWarning, match="input 1: the explained score .* is clipped at the top"):
        cam(IMAGES[[inside, clipped]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam(IMAGES[[inside]])


def as_png(n: int, explainer: Explainer, path: Path) -> Path:
    """``IMAGES[n]`` as a PNG through the graph's mean and std (pixels rounded: the logits move by well under an
    int8 step)."""
    import cv2

    spec = explainer.preprocess
    pixels = np.uint8(
        np.clip(np.rint((IMAGES[n].transpose(1, 2, 0) * spec.std + spec.mean) / spec.value_scale), 0, 255)
    )
    cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return path


def clipped_and_inside(quantized: dict[str, Path]) -> tuple[int, int]:
    """The first image with a logit clipped at the top (5 steps beyond), the first with all logits a step inside."""
    _, side, _ = deployed_logits(quantized["logits"], IMAGES)
    return int(np.flatnonzero((side == 1).any(1))[0]), int(np.flatnonzero((side == 0).all(1))[0])


def test_compare_command_says_why_the_int8_map_is_blank(quantized: dict[str, Path], tmp_path: Path) -> None:
    """``onnxcam compare`` float32 vs int8 on an image whose int8 logit is clipped (still clipped once read back
    from PNG): the ρ of the blank int8 map comes with the clip's line on stderr, for model B only."""
    from click.testing import CliRunner

    from onnxcam.cli import main

    fp32, int8 = quantized["logits"].with_suffix(".fp32.onnx"), quantized["logits"].with_suffix(".explainer.onnx")
    export_onnx_file(fp32, tmp_path / "fp32.explainer.onnx", log=lambda _: None)
    as_png(clipped_and_inside(quantized)[0], Explainer(int8, provider="cpu"), tmp_path / "clipped.png")
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "fp32.explainer.onnx"), str(int8), str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "clipped.png: model B: the explained score (" in result.stderr and "model A:" not in result.stderr


def test_node_example_says_why_the_int8_map_is_blank(quantized: dict[str, Path], tmp_path: Path) -> None:
    """The JavaScript runtime (examples/explain.mjs, onnxruntime-node) on an int8 graph with in-graph Grad-CAM and
    the clipped image: a blank map, and on stderr the line the Python runtime gives for it (its peer), word for
    word; an image inside the range gets none."""
    from test_web import missing

    reason = missing("onnxruntime-node", "sharp")
    if reason:
        pytest.skip(reason)
    import subprocess

    path = tmp_path / "cam.onnx"
    export_onnx_file(quantized["logits"], path, in_graph=["gradcam"], log=lambda _: None)
    explainer = Explainer(path, provider="cpu")
    clipped, inside = clipped_and_inside(quantized)
    image = as_png(clipped, explainer, tmp_path / "clipped.png")
    (python,) = explainer.explain([str(image)], methods=["gradcam"])
    (line,) = python.warnings
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["node", "examples/explain.mjs", str(path), str(image), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"explain.mjs: {image}: {line}\n"
    assert np.load(tmp_path / "o.npy").max() == 0
    image = as_png(inside, explainer, tmp_path / "inside.png")
    done = subprocess.run(
        ["node", "examples/explain.mjs", str(path), str(image)], capture_output=True, text=True, cwd=root
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_explainer_without_score_limits_still_explains(quantized: dict[str, Path], tmp_path: Path) -> None:
    """An int8 explainer written before ``onnxcam.score_limits`` existed (the key removed): a clipped image is
    explained as before — blank Grad-CAM map, no clip found, no warning — and Score-CAM still maps it."""
    from onnxcam import contract

    model = onnx.load(str(quantized["logits"].with_suffix(".explainer.onnx")))
    kept = [p for p in model.metadata_props if p.key != contract.META_SCORE_LIMITS]
    assert len(kept) == len(model.metadata_props) - 1
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    explainer = Explainer(tmp_path / "old.onnx", provider="cpu")
    _, side, _ = deployed_logits(quantized["logits"], IMAGES)
    n = int(np.flatnonzero((side == 1).any(1))[0])
    (result,) = explainer.explain_arrays(IMAGES[n : n + 1], methods=("gradcam", "scorecam"))
    assert explainer.metadata.score_limits is None and result.score_clip is None and result.warnings == []
    assert result.maps["gradcam"].max() == 0 and result.maps["scorecam"].max() > 0


def test_class_set_with_a_clipped_class_says_its_part_is_missing(quantized: dict[str, Path]) -> None:
    """A set of two classes, one clipped (gradient 0) and one inside the range: the maps are not blank but show only
    the other class's part, and the warning says so (found by one more run seeded with the clipped class only). A
    set whose class sits at the top of the range yet rounds there from inside (``z/s + zp ≤ q_max + 0.4``: gradient
    1) gets no warning, nor a set of two classes inside."""
    from onnxcam.targets import ClassSet

    explainer = Explainer(quantized["logits"].with_suffix(".explainer.onnx"), provider="cpu")
    logits, side, over = deployed_logits(quantized["logits"], IMAGES)
    hi = explainer.metadata.score_limits[1]
    n, clipped = (int(i) for i in np.argwhere(side == 1)[0])
    m, rounded = (int(i) for i in np.argwhere((over > -0.5) & (over <= 0.4))[0])
    assert logits[m, rounded] == pytest.approx(hi, rel=1e-6)  # at the top, like the clipped one
    inside = [k for k in range(logits.shape[1]) if side[n, k] == 0 and side[m, k] == 0][:2]
    targets = [ClassSet((clipped, inside[0])), ClassSet((rounded, inside[0])), ClassSet(tuple(inside))]
    results = explainer.explain_arrays(IMAGES[[n, m, n]], target=targets, methods=("gradcam",))
    (line,) = results[0].warnings
    assert results[0].score_clip is not None and results[0].score_clip.partial
    assert line.startswith(f"the explained scores at {hi:.6g} are clipped at the top") and "other explained" in line
    assert results[0].maps["gradcam"].max() > 0
    assert results[1].warnings == [] and results[1].score_clip is None
    assert results[2].warnings == [] and results[2].score_clip is None
