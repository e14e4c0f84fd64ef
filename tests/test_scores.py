"""Score heads: sigmoid binary and multi-label heads, probabilities, trailing Softmax/Sigmoid, declared kinds.

References: pytorch-grad-cam (``BinaryClassifierOutputTarget``, sums of ``ClassifierOutputTarget``) on the same
random-init PyTorch model, PyTorch's own sigmoid/softmax, and the formulas of RISE and deletion/insertion written
out here with ``1 / (1 + exp(−z))``. Models are small (32×32 inputs, TorchScript exporter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import ExportError, export_model
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from onnxcam import compat, scores
from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.metrics.deletion import baseline, curve_inputs, saliency_rank, trapezoid_auc

SIZE = (32, 32)
QUIET = {"exporter": "torchscript", "log": lambda _: None}


def logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


class Net(nn.Module):
    """Conv → ReLU → MaxPool → Conv → ReLU → GAP → Linear(``outputs``), then ``final`` (e.g. ``torch.sigmoid``)."""

    def __init__(self, outputs: int, final=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, outputs)
        self.final = final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.features(x).mean((2, 3)))
        return z if self.final is None else self.final(z)


def images(n: int = 4, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, *SIZE)).astype(np.float32)


def centred(model: Net) -> Net:
    """``model`` with its bias shifted so that the logits of :func:`images` straddle 0 (both predictions occur)."""
    with torch.no_grad():
        z = model(torch.from_numpy(images()))[:, 0].sort().values
        model.fc.bias -= (z[1] + z[2]) / 2
    return model


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explainer, nn.Module, Path]:
    model = centred(Net(1).eval())
    path = tmp_path_factory.mktemp("binary") / "binary.onnx"
    export_model(model, path, ["features.4"], SIZE, **QUIET)  # kind detected from [N, 1]
    return Explainer(path, provider="cpu"), model, path


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explainer, nn.Module]:
    model = Net(4).eval()
    path = tmp_path_factory.mktemp("multi") / "multi.onnx"
    export_model(model, path, ["features.4"], SIZE, scores_kind="sigmoid", labels=list("abcd"), **QUIET)
    return Explainer(path, provider="cpu"), model


def gradcam_reference(model: nn.Module, x: np.ndarray, targets: list) -> np.ndarray:
    with GradCAM(model=model, target_layers=[model.features[4]]) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=targets)


# ---------------------------------------------------------------------------------------------------- pure numpy


def test_probabilities_per_kind() -> None:
    z = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    np.testing.assert_allclose(scores.probabilities(z, "sigmoid"), logistic(z), rtol=1e-12)
    softmax = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(scores.probabilities(z, "logits"), softmax, rtol=1e-12)
    np.testing.assert_array_equal(scores.probabilities(z, "probabilities"), z)
    with pytest.raises(scores.ScoresError, match="no probabilities"):
        scores.probabilities(z, "raw")
    assert np.isfinite(scores.sigmoid(np.array([-800.0, 800.0]))).all()


def test_binary_head_is_two_classes() -> None:
    z = np.array([[1.5], [-0.25]])
    p = logistic(z[:, 0])
    np.testing.assert_allclose(scores.class_probabilities(z, "sigmoid"), np.stack([1 - p, p], 1), rtol=1e-12)
    np.testing.assert_array_equal(scores.top1(z, "sigmoid"), [1, 0])
    np.testing.assert_array_equal(scores.class_seed(np.array([1, 0]), "sigmoid", (1,)), [[1.0], [-1.0]])
    for side, sign in ((1, 1.0), (0, -1.0)):
        seed = np.full((2, 1), sign)
        np.testing.assert_allclose(scores.target_probability(z, seed, "sigmoid"), logistic(sign * z[:, 0]))
        np.testing.assert_allclose(scores.class_probabilities(z, "sigmoid")[:, side], logistic(sign * z[:, 0]))
    assert scores.class_labels("sigmoid", (1,), ["tumour"]) == ("not tumour", "tumour")
    assert scores.class_labels("sigmoid", (1,), None) == ("negative", "positive")
    with pytest.raises(scores.ScoresError, match="one logit"):
        scores.class_set_seed([0, 1], "sigmoid", (1,))


def test_topk_and_predicted_multilabel() -> None:
    z = np.array([[2.0, -1.0, 0.5, 3.0]])
    indices, values = scores.topk(z, "sigmoid", 3)
    np.testing.assert_array_equal(indices, [[3, 0, 2]])
    np.testing.assert_allclose(values, logistic(z[:, [3, 0, 2]]))
    np.testing.assert_array_equal(scores.predicted_classes(z, "sigmoid")[0], [0, 2, 3])
    np.testing.assert_array_equal(scores.predicted_classes(z, "sigmoid", threshold=0.9)[0], [3])
    indices, values = scores.topk(z, "raw", 2)  # raw: ranked by value
    np.testing.assert_array_equal(indices, [[3, 0]])
    np.testing.assert_array_equal(values, [[3.0, 2.0]])


# ---------------------------------------------------------------------------------------------------- binary head


def test_binary_metadata_probability_and_parity_both_sides(binary) -> None:
    explainer, model, _ = binary
    assert explainer.scores_kind == "sigmoid" and explainer.binary and explainer.classes == 2
    x = images()
    with torch.no_grad():
        logit = model(torch.from_numpy(x))[:, 0].numpy()
    top = explainer.explain_arrays(x, None, ["gradcam"])
    for result, z in zip(top, logit, strict=True):
        side = int(z >= 0)
        assert result.class_index == side and result.label == scores.BINARY_SIDES[side]
        assert result.probability == pytest.approx(logistic(z if side else -z), abs=1e-6)
        assert result.score == pytest.approx(z if side else -z, abs=1e-5)
        assert sum(p for *_, p in result.topk) == pytest.approx(1.0)
    assert {int(z >= 0) for z in logit} == {0, 1}, "pick images that cover both predictions"
    for category in (0, 1):
        ref = gradcam_reference(model, x, [BinaryClassifierOutputTarget(category)] * len(x))
        ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, category, ["gradcam"])])
        assert float(np.abs(ours - ref).max()) <= 1e-4
        assert float(ours.max()) > 0
    predicted = gradcam_reference(model, x, [BinaryClassifierOutputTarget(int(z >= 0)) for z in logit])
    assert float(np.abs(np.stack([r.maps["gradcam"] for r in top]) - predicted).max()) <= 1e-4
    negative = explainer.explain_arrays(x, "negative", ["gradcam"])
    assert [r.class_index for r in negative] == [0] * len(x)


def test_binary_compat_target(binary) -> None:
    explainer, model, _ = binary
    x = images(2)
    ours = compat.GradCAM(model=explainer)(input_tensor=x, targets=[compat.BinaryClassifierOutputTarget(0)] * 2)
    ref = gradcam_reference(model, x, [BinaryClassifierOutputTarget(0)] * 2)
    assert float(np.abs(ours - ref).max()) <= 1e-4
    logit = compat.GradCAM(model=explainer)(input_tensor=x, targets=[compat.ClassifierOutputTarget(0)] * 2)
    assert float(np.abs(logit - gradcam_reference(model, x, [ClassifierOutputTarget(0)] * 2)).max()) <= 1e-4
    assert float(np.abs(logit - ours).max()) > 1e-2, "the two sides differ"


def test_binary_rise_uses_sigmoid_probability(binary) -> None:
    explainer, model, _ = binary
    x = images(3)
    options = {"masks": 16, "batch_size": 16, "cells": 4}
    results = explainer.explain_arrays(x, None, ["rise"], options=options)
    maps = [r.maps["rise"] for r in results]
    assert max(float(np.abs(maps[0] - m).max()) for m in maps[1:]) > 1e-3, "RISE maps must depend on the image"
    from onnxcam.methods.rise import rise_masks

    grids, shifts = (np.random.default_rng(s) for s in np.random.SeedSequence(0).spawn(2))
    masks = rise_masks(16, SIZE, 4, 0.5, grids, shifts)
    for n, result in enumerate(results):
        with torch.no_grad():
            z = model(torch.from_numpy(x[n][None] * masks[:, None]))[:, 0].numpy()
        sign = 1.0 if result.class_index == 1 else -1.0
        expected = (logistic(sign * z) @ masks.reshape(16, -1) / (16 * 0.5)).reshape(SIZE)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        assert float(np.abs(result.maps["rise"] - expected).max()) <= 1e-4


def test_binary_deletion_insertion_on_sigmoid(binary) -> None:
    explainer, model, _ = binary
    x = images(2)
    steps = 8
    results = explainer.explain_arrays(
        x, None, ["gradcam"], metrics=["deletion", "insertion", "average_drop"], options={"curve_steps": steps}
    )
    for n, result in enumerate(results):
        values = result.metrics["gradcam"]
        assert values["deletion"] != pytest.approx(values["insertion"])
        sign = 1.0 if result.class_index == 1 else -1.0
        rank = saliency_rank(result.maps["gradcam"])
        for name in ("deletion", "insertion"):
            substrate = baseline(x[n], "zero" if name == "deletion" else "blur")
            start, finish = (x[n], substrate) if name == "deletion" else (substrate, x[n])
            with torch.no_grad():
                z = model(torch.from_numpy(curve_inputs(start, finish, rank, steps)))[:, 0].numpy()
            assert values[name] == pytest.approx(trapezoid_auc(logistic(sign * z)), abs=1e-5)
        with torch.no_grad():
            z0 = model(torch.from_numpy(x[n : n + 1]))[0, 0].item()
            zm = model(torch.from_numpy(x[n : n + 1] * result.maps["gradcam"][None, None]))[0, 0].item()
        p, pm = logistic(sign * z0), logistic(sign * zm)
        assert values["average_drop"] == pytest.approx(max(p - pm, 0) / p, abs=1e-5)


def test_binary_both_sides_from_the_cli(binary, tmp_path: Path) -> None:
    import cv2

    *_, path = binary
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    records = {}
    for side in ("negative", "positive", "top1"):
        out = tmp_path / side
        result = CliRunner().invoke(main, ["explain", str(path), str(image), "--out", str(out), "--target", side, "-q"])
        assert result.exit_code == 0, result.output
        records[side] = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert records["negative"]["class_index"] == 0 and records["positive"]["class_index"] == 1
    p_neg, p_pos = records["negative"]["probability"], records["positive"]["probability"]
    assert p_neg + p_pos == pytest.approx(1.0) and records["negative"]["score"] == pytest.approx(
        -records["positive"]["score"]
    )
    assert records["top1"]["class_index"] == int(p_pos >= 0.5)


def test_binary_labels(tmp_path: Path) -> None:
    model = Net(1).eval()
    two = tmp_path / "two.onnx"
    export_model(model, two, ["features.4"], SIZE, labels=["benign", "malignant"], verify=False, **QUIET)
    explainer = Explainer(two, provider="cpu")
    assert explainer.labels == ("benign", "malignant")
    [result] = explainer.explain_arrays(images(1), "malignant", ["gradcam"])
    assert result.class_index == 1 and result.label == "malignant"
    [result] = explainer.explain_arrays(images(1), "negative", ["gradcam"])
    assert result.label == "benign"
    with pytest.raises(ExportError, match="labels: 3 given, but the model has 1 class score"):
        export_model(model, None, ["features.4"], SIZE, labels=["a", "b", "c"], verify=False, **QUIET)


# ---------------------------------------------------------------------------------------------------- multi-label


def test_multilabel_probabilities_and_sum_parity(multilabel) -> None:
    explainer, model = multilabel
    x = images()
    with torch.no_grad():
        z = model(torch.from_numpy(x)).numpy()
    results = explainer.explain_arrays(x, "a,c", ["gradcam"], topk=4)
    for n, result in enumerate(results):
        assert result.class_index == -1 and result.label == "a + c"
        assert result.score == pytest.approx(z[n, 0] + z[n, 2], abs=1e-5)
        assert result.probability == pytest.approx(logistic(z[n, [0, 2]]).mean(), abs=1e-6)
        assert {i: p for i, _, p in result.topk} == pytest.approx(dict(enumerate(logistic(z[n]))), abs=1e-6)

    class SumOf:
        def __init__(self, *targets: ClassifierOutputTarget) -> None:
            self.targets = targets

        def __call__(self, output: torch.Tensor) -> torch.Tensor:
            return sum(t(output) for t in self.targets)

    ref = gradcam_reference(model, x, [SumOf(ClassifierOutputTarget(0), ClassifierOutputTarget(2))] * len(x))
    assert float(np.abs(np.stack([r.maps["gradcam"] for r in results]) - ref).max()) <= 1e-4


def test_multilabel_predicted_one_map_each(multilabel) -> None:
    explainer, model = multilabel
    x = images()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    threshold = float(np.median(p))
    per_image = explainer.explain_predicted_arrays(x, threshold, methods=["gradcam"])
    for n, explanations in enumerate(per_image):
        assert [e.class_index for e in explanations] == list(np.flatnonzero(p[n] > threshold))
        for e in explanations:
            ref = gradcam_reference(model, x[n : n + 1], [ClassifierOutputTarget(e.class_index)])[0]
            assert float(np.abs(e.maps["gradcam"] - ref).max()) <= 1e-4
    assert sum(len(e) for e in per_image) > 0


# ---------------------------------------------------------------------------------------------- trailing ops, kinds


@pytest.mark.parametrize(
    ("final", "declared", "kind", "skipped"),
    [
        (torch.sigmoid, None, "sigmoid", True),
        (nn.Softmax(dim=1), None, "logits", True),
        (nn.Softmax(dim=1), "probabilities", "probabilities", False),
        (None, "raw", "raw", False),
    ],
    ids=["sigmoid", "softmax", "softmax-kept", "raw"],
)
def test_trailing_activation_and_declared_kinds(tmp_path: Path, final, declared, kind: str, skipped: bool) -> None:
    model = Net(3, final).eval()
    path = tmp_path / "m.onnx"
    _, report = export_model(model, path, ["features.4"], SIZE, scores_kind=declared, **QUIET)
    assert report is not None and report.worst < 1e-6, "verified against PyTorch on the same quantity"
    explainer = Explainer(path, provider="cpu")
    assert explainer.scores_kind == kind
    x = images(2)
    with torch.no_grad():
        logits = Net(3).eval()(torch.from_numpy(x)).numpy()  # same seed, same weights, no final op
        output = model(torch.from_numpy(x)).numpy()
    graph_scores = explainer.scores(x)
    np.testing.assert_allclose(graph_scores, logits if skipped else output, atol=1e-5)
    [first, _] = explainer.explain_arrays(x, None, ["gradcam"], topk=3)
    if kind == "raw":
        assert np.isnan(first.probability) and [i for i, *_ in first.topk] == list(np.argsort(-output[0]))
    else:
        expected = logistic(logits[0]) if kind == "sigmoid" else output[0]  # softmax output or sigmoid of logits
        assert {i: p for i, _, p in first.topk} == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_declared_kind_contradicting_the_graph(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"output is a Sigmoid.*--scores sigmoid"):
        export_model(Net(3, torch.sigmoid).eval(), None, ["features.4"], SIZE, scores_kind="logits", **QUIET)
    with pytest.raises(ExportError, match="unknown kind"):
        export_model(Net(3).eval(), None, ["features.4"], SIZE, scores_kind="softmax", **QUIET)


def test_info_shows_the_kind(binary) -> None:
    *_, path = binary
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0 and "sigmoid: one logit, binary" in result.output
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["onnxcam.scores_kind"] == "sigmoid"


def test_onnx_file_ending_in_sigmoid(tmp_path: Path) -> None:
    from onnxcam_export.api import export_onnx_file

    source = tmp_path / "foreign.onnx"
    model = Net(1, torch.sigmoid).eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, *SIZE),), str(source), input_names=["x"], opset_version=17, dynamo=False
    )
    layer = next(n.output[0] for n in onnx.load(str(source)).graph.node if n.op_type == "Relu")
    export_onnx_file(source, tmp_path / "e.onnx", [layer], log=lambda _: None)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert explainer.scores_kind == "sigmoid" and explainer.binary
    x = images(2)
    with torch.no_grad():
        logits = Net(1).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(explainer.scores(x), logits, atol=1e-5)


def test_evaluate_negative_side_and_predicted_target(binary, multilabel, tmp_path: Path) -> None:
    import cv2

    explainer, _, path = binary
    image = tmp_path / "img.png"
    pixels = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(image), pixels[..., ::-1])
    args = ["evaluate", str(path), str(image), "--out", str(tmp_path / "ev"), "--target", "negative"]
    result = CliRunner().invoke(main, [*args, "--metric", "deletion", "--option", "curve_steps=4"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()[0])
    [direct] = explainer.explain(pixels, "negative", ["gradcam"], metrics=["deletion"], options={"curve_steps": 4})
    assert record["class_index"] == 0
    assert record["metrics"]["gradcam"]["deletion"] == pytest.approx(direct.metrics["gradcam"]["deletion"], abs=1e-6)
    [predicted] = explainer.explain(pixels, "predicted", ["gradcam"])
    assert predicted.class_index == int(predicted.topk[0][0])
    out = tmp_path / "multi"
    refused = CliRunner().invoke(main, ["explain", str(path), str(image), "--out", str(out), "--target", "0,1"])
    assert refused.exit_code != 0 and "binary head has one logit" in refused.output
    with pytest.raises(ValueError, match="explain_predicted"):
        multilabel[0].explain_arrays(images(1), "predicted")


class DenseBinary(nn.Module):
    """A binary segmentation head: one logit per pixel, ``[N, 1, 16, 16]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_dense_binary_head(tmp_path: Path) -> None:
    model = DenseBinary().eval()
    path = tmp_path / "seg.onnx"
    export_model(model, path, ["features.1"], SIZE, **QUIET)
    explainer = Explainer(path, provider="cpu")
    assert explainer.scores_kind == "sigmoid" and explainer.binary and explainer.score_shape == (1, 16, 16)
    x = images(2)
    with torch.no_grad():
        z = model(torch.from_numpy(x)).numpy()[:, 0]
    for side, sign in (("negative", -1.0), ("positive", 1.0)):
        results = explainer.explain_arrays(x, side, ["gradcam"])
        for n, result in enumerate(results):
            assert result.probability == pytest.approx(logistic(sign * z[n].mean()), abs=1e-6)
            assert result.score == pytest.approx(sign * z[n].sum(), rel=1e-5)
        with GradCAM(model=model, target_layers=[model.features[1]]) as cam:
            ref = cam(input_tensor=torch.from_numpy(x), targets=[lambda out, s=sign: s * out.sum()] * 2)
        assert float(np.abs(np.stack([r.maps["gradcam"] for r in results]) - ref).max()) <= 1e-4


@pytest.mark.parametrize(("declared", "kind"), [(None, "logits"), ("probabilities", "probabilities")])
def test_onnx_file_whose_output_is_a_probability(tmp_path: Path, declared, kind: str) -> None:
    from onnxcam_export.api import export_onnx_file

    source = tmp_path / "softmax.onnx"
    model = Net(3, nn.Softmax(dim=1)).eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, *SIZE),), str(source), input_names=["x"], opset_version=13, dynamo=False
    )
    layer = next(n.output[0] for n in onnx.load(str(source)).graph.node if n.op_type == "Relu")
    export_onnx_file(source, tmp_path / "e.onnx", [layer], scores_kind=declared, log=lambda _: None)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert explainer.scores_kind == kind
    x = images(2)
    with torch.no_grad():
        p = model(torch.from_numpy(x)).numpy()
        logits = Net(3).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(explainer.scores(x), logits if kind == "logits" else p, atol=1e-5)
    results = explainer.explain_arrays(x, 2, ["gradcam"])
    assert [r.probability for r in results] == pytest.approx(p[:, 2], abs=1e-6)
