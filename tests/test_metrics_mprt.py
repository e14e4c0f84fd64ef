"""Model parameter randomisation test (MPRT): weights overridden in onnxruntime really change the model, the cascade
starts at ρ = SSIM = 1 exactly (nothing randomised, the file's weights loaded through the same override path), runs
from the top layer down, is reproducible with its seed, and Grad-CAM's maps decorrelate (Adebayo et al. 2018: a
method that passes the check). ``onnxcam evaluate --metric mprt`` gives the API's values. Slow: the pretrained
EfficientNet-Lite0 on a real photo.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from method_cases import photos
from onnx import numpy_helper
from skimage import data
from small_models import export_gapnet
from test_demo_model import demo  # noqa: F401  (the pretrained demo model's fixture)

from onnxcam.cli import main
from onnxcam.explainer import Explainer, one_hot_seed
from onnxcam.images import read_image
from onnxcam.metrics.mprt import mprt_curve, parametrised_layers
from onnxcam.preprocess import preprocess_batch

TARGET = 3


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory):
    path = export_gapnet(tmp_path_factory.mktemp("gapnet") / "gapnet.onnx")
    explainer = Explainer(path, provider="cpu", threads=2)
    x = photos((32, 32))
    return explainer, x, one_hot_seed(np.array([TARGET, TARGET]), explainer.score_shape)


def test_overridden_initializers_change_the_model(gapnet) -> None:
    explainer, x, _ = gapnet
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(explainer.path)).graph.initializer}
    zeroed = Explainer(explainer.path, "cpu", initializers={"model.fc.weight": np.zeros((12, 16), np.float32)})
    np.testing.assert_array_equal(zeroed.scores(x), np.broadcast_to(weights["model.fc.bias"], (2, 12)))
    assert not np.allclose(explainer.scores(x), zeroed.scores(x))


def test_cascade_starts_at_one_and_decorrelates_grad_cam(gapnet) -> None:
    explainer, x, seed = gapnet
    original = explainer.explain_arrays(x, [TARGET, TARGET], ["gradcam"])
    assert all(np.ptp(r.maps["gradcam"]) > 0 for r in original)  # rank correlation is defined
    curve = mprt_curve(explainer, x, seed, "gradcam", random_seed=1)
    assert [s.layer for s in curve] == ["", *[layer.name for layer in parametrised_layers(explainer.path)[::-1]]]
    assert curve[1].layer.endswith("Gemm")  # the top layer goes first
    np.testing.assert_array_equal(curve[0].spearman, 1.0)
    np.testing.assert_allclose(curve[0].ssim, 1.0, atol=1e-12)
    for step in curve[1:]:
        assert (step.spearman < 0.9).all() and (step.ssim < 0.9).all()
    assert (curve[-1].spearman < 0.5).all()
    again = mprt_curve(explainer, x, seed, "gradcam", random_seed=1, steps=2)
    other = mprt_curve(explainer, x, seed, "gradcam", random_seed=2, steps=2)
    np.testing.assert_array_equal(again[2].spearman, curve[2].spearman)
    assert not np.array_equal(other[2].spearman, curve[2].spearman)


def test_evaluate_metric_mprt_matches_the_api(gapnet, tmp_path) -> None:
    explainer, _, seed = gapnet
    paths = []
    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(cv2.resize(image, (32, 32)), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    args = [str(explainer.path), *map(str, paths), "--out", str(out), "--metric", "mprt,mprt_ssim"]
    args += ["--target", str(TARGET), "--option", "mprt_layers=1", "--option", "mprt_seed=4"]
    result = CliRunner().invoke(main, ["evaluate", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line)["metrics"]["gradcam"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    batch = preprocess_batch([read_image(p) for p in paths], explainer.preprocess)
    last = mprt_curve(explainer, batch, seed, "gradcam", steps=1, random_seed=4)[-1]
    np.testing.assert_allclose([r["mprt"] for r in records], last.spearman, atol=1e-12)
    np.testing.assert_allclose([r["mprt_ssim"] for r in records], last.ssim, atol=1e-12)


def test_missing_onnx_is_refused_in_one_line(gapnet, monkeypatch) -> None:
    explainer, x, seed = gapnet
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"^the MPRT sanity check needs onnx: pip install 'onnxcam\[metrics\]'$"):
        mprt_curve(explainer, x, seed, "gradcam")


def test_a_graph_without_float_weights_is_refused(gapnet, monkeypatch) -> None:
    explainer, x, seed = gapnet
    monkeypatch.setattr("onnxcam.metrics.mprt.PARAMETRISED", ("QLinearConv",))  # what a quantized graph offers
    with pytest.raises(ValueError, match="has no float Conv/ConvTranspose/Gemm/MatMul weights to randomise"):
        mprt_curve(explainer, x, seed, "gradcam")


@pytest.mark.slow
def test_pretrained_model_fails_no_sanity_check(demo: Explainer) -> None:  # noqa: F811
    x = preprocess_batch([data.chelsea()], demo.preprocess)
    found = demo.explain_arrays(x, None, ["gradcam"])[0]
    seed = one_hot_seed(np.array([found.class_index]), demo.score_shape)
    curve = mprt_curve(demo, x, seed, "gradcam", steps=6, random_seed=0)
    assert curve[0].spearman[0] == 1.0 and curve[0].ssim[0] == pytest.approx(1.0, abs=1e-12)
    assert curve[-1].spearman[0] < 0.5 and curve[-1].ssim[0] < curve[0].ssim[0]


@pytest.mark.parametrize("steps", [0, 2])
def test_last_step_alone_equals_the_cascades_last(gapnet, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metric explains twice, not once per layer (22× on ResNet-18), and gets the cascade's last step."""
    explainer, x, seed = gapnet
    whole = mprt_curve(explainer, x, seed, "gradcam", steps=steps, random_seed=1)
    calls = []
    explain = Explainer.explain_arrays
    monkeypatch.setattr(Explainer, "explain_arrays", lambda *a, **k: calls.append(1) or explain(*a, **k))
    last = mprt_curve(explainer, x, seed, "gradcam", steps=steps, random_seed=1, last_only=True)
    assert len(calls) == 2 and len(whole) > 2  # the original maps and the randomised model's
    assert len(last) == 1 and last[0].layer == whole[-1].layer
    np.testing.assert_array_equal(last[0].spearman, whole[-1].spearman)
    np.testing.assert_array_equal(last[0].ssim, whole[-1].ssim)


def test_more_layers_than_the_graph_has_are_refused_before_any_work(gapnet, tmp_path, monkeypatch) -> None:
    """GapNet has 3 randomisable layers (two convolutions, the linear head): 3 is the whole cascade, 4 is refused in
    one line by the API (``mprt_curve``, ``explain_arrays(metrics=...)``) and by ``onnxcam evaluate`` and
    ``onnxcam explain`` (usage error), before any inference; never clamped."""
    explainer, x, seed = gapnet
    assert mprt_curve(explainer, x, seed, "gradcam", steps=3, last_only=True)[0].layer == "/model/body/body.0/Conv"
    calls = []
    run = Explainer.run
    monkeypatch.setattr(Explainer, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    message = (
        "mprt: cannot randomise {} top layers (mprt_layers): gapnet.onnx has 3 randomisable layers (float "
        "Conv/ConvTranspose/Gemm/MatMul weights); give 1 to 3, or 0 for all"
    )
    with pytest.raises(ValueError) as refused:
        mprt_curve(explainer, x, seed, "gradcam", steps=4)
    assert str(refused.value) == message.format(4)
    with pytest.raises(ValueError) as refused:
        explainer.explain_arrays(x, TARGET, ["gradcam"], metrics=["mprt"], options={"mprt_layers": 5})
    assert str(refused.value) == message.format(5) and not calls
    image = tmp_path / "cat.png"
    cv2.imwrite(str(image), cv2.resize(data.chelsea(), (32, 32)))
    for command in ("evaluate", "explain"):
        args = [command, str(explainer.path), str(image), "--out", str(tmp_path / command), "--metric", "mprt"]
        result = CliRunner().invoke(main, [*args, "--option", "mprt_layers=999", "-q"])
        assert result.exit_code == 2 and not calls, result.output
        assert result.output.splitlines()[-1] == f"Error: Invalid value for --option: {message.format(999)}"
