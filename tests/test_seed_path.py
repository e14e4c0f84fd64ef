"""The seed path of export's verification (:func:`onnxcam_export.verify.objectives`): a random Gaussian ``seed`` row per
image over the whole score tensor, ``y_n = Σ seed_n ⊙ scores_n``, checked against float64 autograd (PyTorch sources)
and float64 finite differences (ONNX sources).

A wrong rule is injected in each test where the class path's one-hot seeds cannot see it, and the test shows both:
the class path alone passes, the seed path refuses with the node named.

- detector (``TinyYolo``, ``[N, 4 + K, A]``): ``x̄ = |ḡ| · eˣ`` for ``Exp`` (the box sizes ``w, h = e^t · stride``)
  is right for a non-negative cotangent, and the class path only ever sends the one-hot (≥ 0) of one entry back
  into a box size;
- dense output (``[N, K, H, W]`` after a bilinear 2× upsampling): ``Resize``'s adjoint replaced by the nearest one
  (the sum over each 2×2 block) is right for a cotangent uniform over positions, which the class path's seed (one
  class, every position) is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnxcam_export import verify
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.autodiff.registry import RULES
from onnxcam_export.verify import SEED_PATH, VerificationError
from test_detection import SIZE, TinyYolo
from torch import nn
from torch.nn import functional as F

from onnxcam import contract

EXACT = 1e-6  # relative error of a right graph in float64 (measured ~1e-16 – 1e-9)
QUIET = {"heads": False, "log": lambda _: None}


def _exp_sign_lost(ctx):  # a wrong Exp rule: x̄ = |ḡ| · eˣ (right only where ḡ ≥ 0)
    return [ctx.emit("Mul", ctx.emit("Abs", ctx.grad()), ctx.output())]


def _resize_as_nearest(ctx):  # a wrong Resize rule for a 2× upsampling: the sum over each 2×2 block
    pooled = ctx.emit("AveragePool", ctx.grad(), kernel_shape=[2, 2], strides=[2, 2])
    return [ctx.emit("Mul", pooled, ctx.const(4.0, like=ctx.input(0))), *[None] * (len(ctx.inputs) - 1)]


class TinySegmenter(nn.Module):
    """conv → ReLU → stride-2 conv → ReLU → 1×1 conv to K = 4 classes, upsampled 2× bilinearly: ``[N, 4, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.classifier(self.body(x)), scale_factor=2.0, mode="bilinear", align_corners=False)


def _detector() -> nn.Module:
    torch.manual_seed(0)
    return TinyYolo().eval()


def _segmenter() -> nn.Module:
    torch.manual_seed(0)
    return TinySegmenter().eval()


def _seed_errors(report) -> dict[str, float]:
    return {k.removesuffix(SEED_PATH): max(v) for k, v in report.errors.items() if k.endswith(SEED_PATH)}


@pytest.fixture(scope="module")
def segmenter_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """TinySegmenter as a foreign ONNX file (opset 18) and the tensor of its second ReLU."""
    path = tmp_path_factory.mktemp("seedpath") / "segmenter.onnx"
    torch.onnx.export(_segmenter(), torch.randn(1, 3, 32, 32), path, dynamo=False, opset_version=18)
    return path, "/body/body.3/Relu_output_0"


def test_detector_and_dense_output_verify_on_the_seed_path(segmenter_onnx: tuple[Path, str]) -> None:
    """Right graphs: every gradient on the seed path within float64 rounding, named in the log's verdict."""
    logs: list[str] = []
    _, report = export_model(
        _detector(), None, ["p3", "p4"], (SIZE, SIZE), exporter="torchscript", task="detect",
        detect_layout="yolov8", input_gradients=("standard",), log=logs.append, heads=False,
    )  # fmt: skip
    seed = _seed_errors(report)
    assert set(seed) == {"gradient:p3", "gradient:p4", "gradient:input"}, seed
    assert max(seed.values()) < EXACT and all(len(report.errors[k + SEED_PATH]) == 3 for k in seed), seed
    assert "seed path worst" in next(line for line in logs if line.startswith("verified against"))
    path, relu = segmenter_onnx
    _, report = export_onnx_file(path, None, [relu], input_size=(32, 32), input_gradients=("standard",), **QUIET)
    seed = _seed_errors(report)
    assert set(seed) == {f"gradient:{relu}", "gradient:input"} and max(seed.values()) < 1e-4, seed  # FD: ~1e-9


def test_classifier_has_no_seed_path() -> None:
    from small_models import UnitNet

    torch.manual_seed(0)
    _, report = export_model(UnitNet().eval(), None, ["body.1"], (32, 32), exporter="torchscript", **QUIET)
    assert report is not None and not _seed_errors(report) and report.worst < EXACT


def _refused_on_the_seed_path_only(monkeypatch: pytest.MonkeyPatch, export, node: str) -> None:
    """``export()`` passes with the class path alone and is refused on the seed path, naming ``node``'s op."""
    with monkeypatch.context() as class_path_only:
        class_path_only.setattr(verify, "needs_seed_path", lambda *_: False)
        report = export()
        assert not _seed_errors(report) and report.worst < 1e-4, report.summary()  # missed: what the seed path adds
    with pytest.raises(VerificationError) as refused:
        export()
    message = str(refused.value)
    assert "\n" not in message
    assert SEED_PATH in message and "> tolerance" in message, message
    assert "VJP disagrees" in message and f"({node}," in message, message


@pytest.mark.slow  # ~60 s: naming the node checks the 9 nodes after it, each ~10 float64 runs of ~0.5 s
def test_detector_rule_wrong_off_the_class_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "Exp", _exp_sign_lost)

    def export():
        options = {"exporter": "torchscript", "task": "detect", "detect_layout": "yolov8"}
        return export_model(_detector(), None, ["p3", "p4"], (SIZE, SIZE), **options, **QUIET)[1]

    _refused_on_the_seed_path_only(monkeypatch, export, "Exp")


def test_dense_output_rule_wrong_off_the_class_path_is_refused_by_finite_differences(
    monkeypatch: pytest.MonkeyPatch, segmenter_onnx: tuple[Path, str]
) -> None:
    monkeypatch.setitem(RULES, "Resize", _resize_as_nearest)
    path, relu = segmenter_onnx
    _refused_on_the_seed_path_only(
        monkeypatch, lambda: export_onnx_file(path, None, [relu], input_size=(32, 32), **QUIET)[1], "Resize"
    )


def test_dense_output_rule_wrong_off_the_class_path_is_refused_from_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "Resize", _resize_as_nearest)

    def export():
        return export_model(_segmenter(), None, ["body.3"], (32, 32), exporter="torchscript", **QUIET)[1]

    _refused_on_the_seed_path_only(monkeypatch, export, "Resize")


def _resize_nan(ctx):  # a wrong Resize rule: the right adjoint plus NaN · 0 (NaN everywhere)
    from onnxcam_export.autodiff.rules.resize import resize

    grad, *rest = resize(ctx)
    nan = ctx.emit("Sqrt", ctx.const(-1.0, like=ctx.input(0)))
    return [ctx.emit("Add", grad, ctx.emit("Mul", nan, ctx.emit("Mul", grad, ctx.const(0.0, like=grad)))), *rest]


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_nan_gradients_are_refused(
    monkeypatch: pytest.MonkeyPatch, segmenter_onnx: tuple[Path, str], source: str
) -> None:
    """NaN compares as no error: a graph of NaN gradients was "verified" against autograd (worst nan) and "could not
    be verified" by finite differences; it is refused as wrong (error inf), the node named."""
    monkeypatch.setitem(RULES, "Resize", _resize_nan)
    path, relu = segmenter_onnx
    with pytest.raises(VerificationError) as refused:
        if source == "torch":
            export_model(_segmenter(), None, ["body.3"], (32, 32), exporter="torchscript", **QUIET)
        else:
            export_onnx_file(path, None, [relu], input_size=(32, 32), **QUIET)
    message = str(refused.value)
    assert "worst inf" in message and "(Resize," in message and "\n" not in message, message


def test_seed_path_objective_is_the_seeded_sum() -> None:
    """``Objective(SEED)`` is ``Σ seed_n ⊙ scores_n`` per image, whatever the score tensor's rank."""
    rng = np.random.default_rng(0)
    scores, seed = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    y = verify.SEED_PATH_OBJECTIVE({contract.SCORES: scores}, {}, {contract.SEED: seed})
    np.testing.assert_allclose(y, [np.dot(scores[n].ravel(), seed[n].ravel()) for n in range(2)], rtol=1e-12)
