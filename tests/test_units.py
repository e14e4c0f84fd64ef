"""Unit targets (``--unit-layer``, ``channel:C`` / ``neuron:C,Y,X`` / ``unit:K``): gradients of a unit's value vs
torch autograd, a Grad-CAM map vs pytorch-grad-cam with a custom target returning the unit, every method family, the
CLI, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model
from pytorch_grad_cam import GradCAM
from small_models import UnitNet, export_gapnet
from torch import nn

from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.targets import TargetError
from onnxcam.units import parse_unit

TOLERANCE = 1e-4  # relative: max |ours − autograd| / max |autograd|


def _export(path: Path, layers: list[str], unit_layer: str) -> tuple[Explainer, UnitNet, Path]:
    torch.manual_seed(0)
    model = UnitNet().eval()
    export_model(
        model,
        path,
        layers,
        (32, 32),
        exporter="torchscript",
        input_gradients=("standard",),
        log=lambda _: None,
        unit_layer=unit_layer,
    )
    return Explainer(path, provider="cpu"), model, path


@pytest.fixture(scope="module")
def conv_unit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explainer, UnitNet, Path]:
    """CAM layer body.1, units of body.3 (a later layer)."""
    return _export(tmp_path_factory.mktemp("units") / "conv.onnx", ["body.1"], "body.3")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)


def _autograd(model: nn.Module, modules: dict[str, nn.Module], x: np.ndarray, unit: str, seed: np.ndarray) -> dict:
    """``∂ Σ(seed ⊙ U) / ∂`` each tapped module's output and the input, by torch autograd in float64."""
    model64 = model.double()
    taps: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: taps.__setitem__(k, o)) for k, m in modules.items()]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    try:
        model64(xt)
        y = (taps[unit] * torch.tensor(seed, dtype=torch.float64)).sum()
        names = [k for k in modules if k != unit]
        grads = torch.autograd.grad(y, [taps[k] for k in names] + [xt])
    finally:
        for h in hooks:
            h.remove()
        model.float()
    return {**dict(zip(names, (g.numpy() for g in grads[:-1]), strict=True)), "input": grads[-1].numpy()}


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kinds", [("channel", "channel"), ("neuron", "unit")])
def test_layer_and_input_gradients_of_a_unit_equal_autograd(
    conv_unit: tuple[Explainer, UnitNet, Path], batch: np.ndarray, kinds: tuple[str, str]
) -> None:
    explainer, model, _ = conv_unit
    with torch.no_grad():  # the most active neuron of each image (a dead one would have a zero gradient)
        units = model.body[:4](torch.from_numpy(batch)).numpy()
    peaks = [np.unravel_index(int(u.argmax()), u.shape) for u in units]
    spell = {
        "channel": lambda p: f"channel:{p[0]}",
        "neuron": lambda p: "neuron:" + ",".join(map(str, p)),
        "unit": lambda p: f"unit:{np.ravel_multi_index(p, units.shape[1:])}",
    }
    targets = [spell[k](p) for k, p in zip(kinds, peaks, strict=True)]
    seed = np.stack([parse_unit(t, explainer.metadata.unit).seed for t in targets])
    assert seed.shape == (2, 16, 16, 16)
    out = explainer.run(batch, np.full(2, -1, np.int64), unit_seed=seed)
    ref = _autograd(model, {"body.1": model.body[1], "body.3": model.body[3]}, batch, "body.3", seed)
    assert _rel(out.gradients["body.1"], ref["body.1"]) < TOLERANCE
    ours_input = explainer.graph.session.run(
        ["gradient:input"],
        explainer._feeds(batch, compute=("compute:gradient:input",), unit_seed=seed),
    )[0]
    assert _rel(ours_input, ref["input"]) < TOLERANCE
    assert (out.target_used == -1).all()


def test_class_targets_are_unchanged_by_a_unit_layer(
    conv_unit: tuple[Explainer, UnitNet, Path], batch: np.ndarray
) -> None:
    explainer, model, _ = conv_unit
    out = explainer.run(batch, np.array([3, 6]))
    assert out.target_used.tolist() == [3, 6]
    seed = np.zeros((2, 10), np.float32)
    seed[0, 3] = seed[1, 6] = 1
    taps: dict[str, torch.Tensor] = {}
    hook = model.body[1].register_forward_hook(lambda _m, _i, o: taps.__setitem__("a", o))
    try:
        y = (model(torch.from_numpy(batch)) * torch.from_numpy(seed)).sum()
    finally:
        hook.remove()
    (ref,) = torch.autograd.grad(y, [taps["a"]])
    assert _rel(out.gradients["body.1"], ref.numpy()) < TOLERANCE


def test_gradcam_of_a_channel_equals_pytorch_grad_cam_with_a_custom_target(
    conv_unit: tuple[Explainer, UnitNet, Path], batch: np.ndarray
) -> None:
    explainer, model, _ = conv_unit
    taps: dict[str, torch.Tensor] = {}
    hook = model.body[3].register_forward_hook(lambda _m, _i, o: taps.__setitem__("u", o))
    try:
        # pytorch-grad-cam calls each target on its image's output; the unit comes from the hooked layer instead
        row = iter(range(2))
        targets = [lambda _out, c=c: taps["u"][next(row), c].mean() for c in (5, 11)]
        with GradCAM(model=model, target_layers=[model.body[1]]) as reference:
            theirs = reference(input_tensor=torch.from_numpy(batch), targets=targets)
    finally:
        hook.remove()
    ours = explainer.explain_arrays(batch, ["channel:5", "channel:11"], "gradcam", ["body.1"])
    np.testing.assert_allclose(np.stack([e.maps["gradcam"] for e in ours]), theirs, atol=1e-4)
    assert ours[0].label == "channel:5 of body.3"
    value = model.body[:4](torch.from_numpy(batch))[0, 5].mean().item()
    assert ours[0].score == pytest.approx(value, rel=1e-5)


def test_every_method_family_runs_on_a_unit(conv_unit: tuple[Explainer, UnitNet, Path], batch: np.ndarray) -> None:
    explainer, _, _ = conv_unit
    methods = ["gradcam", "layercam", "scorecam", "saliency", "integratedgradients", "occlusion", "ablationcam"]
    results = explainer.explain_arrays(batch, "channel:5", methods, isolate_methods=True, options={"steps": 8})
    assert set(results[0].maps) == set(methods) - {"ablationcam"}
    assert "Ablation-CAM cannot explain a unit" in results[0].errors["ablationcam"]
    # Integrated Gradients' completeness holds for the unit: Σ attributions ≈ y(x) − y(baseline)
    assert abs(results[0].details["integratedgradients"]["completeness_gap"]) < 0.2


def test_unit_layer_that_is_also_the_cam_layer_gets_the_seed_as_gradient(tmp_path: Path, batch: np.ndarray) -> None:
    explainer, _, _ = _export(tmp_path / "same.onnx", ["body.3", "body.5"], "body.3")
    seed = np.stack([parse_unit(t, explainer.metadata.unit).seed for t in ("channel:2", "neuron:1,0,15")])
    out = explainer.run(batch, np.full(2, -1, np.int64), unit_seed=seed)
    np.testing.assert_array_equal(out.gradients["body.3"], seed)
    assert not out.gradients["body.5"].any()  # a later layer: the unit does not depend on it
    with pytest.raises(ValueError, match=r"layer 'body\.5' is zero for every image: the layer lies after"):
        explainer.explain_arrays(batch, "channel:2", "gradcam", ["body.5"])
    explainer.explain_arrays(batch, "channel:2", "gradcam", ["body.3"])


def test_embedding_unit(tmp_path: Path, batch: np.ndarray) -> None:
    explainer, model, _ = _export(tmp_path / "embed.onnx", ["body.3"], "embed")
    assert explainer.metadata.unit.shape == (8,)
    seed = np.stack([parse_unit(t, explainer.metadata.unit).seed for t in ("unit:3", "channel:6")])
    out = explainer.run(batch, np.full(2, -1, np.int64), unit_seed=seed)
    ref = _autograd(model, {"body.3": model.body[3], "embed": model.embed}, batch, "embed", seed)
    assert _rel(out.gradients["body.3"], ref["body.3"]) < TOLERANCE


def test_refusals_are_one_line(conv_unit: tuple[Explainer, UnitNet, Path], tmp_path: Path) -> None:
    explainer, _, _ = conv_unit
    for bad, cause in (
        ("channel:16", r"does not fit the unit layer 'body.3' of shape \[16, 16, 16\]"),
        ("neuron:1,2", "neuron:C,Y,X"),
        ("unit:x", "expected channel:C"),
    ):
        with pytest.raises(TargetError, match=cause):
            explainer.resolve_target(bad)
    plain = Explainer(export_gapnet(tmp_path / "plain.onnx"), provider="cpu")
    with pytest.raises(TargetError, match="no unit layer: re-export it with --unit-layer"):
        plain.resolve_target("channel:1")


def test_cli_explain_takes_a_channel_target(conv_unit: tuple[Explainer, UnitNet, Path], tmp_path: Path) -> None:
    import cv2

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = ["explain", str(conv_unit[2]), str(image), "--target", "channel:5", "-o", str(out), "--save", "npy"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "channel:5 of body.3" in (out / "results.jsonl").read_text()
    bad = CliRunner().invoke(main, [*args[:4], "channel:99", *args[5:]])
    assert bad.exit_code == 2 and "does not fit the unit layer" in bad.output


def test_onnx_file_with_a_unit_tensor_equals_autograd(tmp_path: Path, batch: np.ndarray) -> None:
    import onnx
    from onnxcam_export.api import export_onnx_file

    torch.manual_seed(0)
    model = UnitNet().eval()
    source = tmp_path / "plain.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), source, dynamo=False, input_names=["x"], opset_version=18)
    relus = [n.output[0] for n in onnx.load(source).graph.node if n.op_type == "Relu"]  # body.1, body.3, body.5, …
    export_onnx_file(source, tmp_path / "e.onnx", [relus[0]], unit_layer=relus[1], log=lambda _: None)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    seed = np.stack([parse_unit(t, explainer.metadata.unit).seed for t in ("channel:3", "channel:9")])
    out = explainer.run(batch, np.full(2, -1, np.int64), unit_seed=seed)
    ref = _autograd(model, {"body.1": model.body[1], "body.3": model.body[3]}, batch, "body.3", seed)
    assert _rel(out.gradients[relus[0]], ref["body.1"]) < TOLERANCE


def test_metrics_score_the_unit(conv_unit: tuple[Explainer, UnitNet, Path], batch: np.ndarray) -> None:
    explainer, model, _ = conv_unit
    [result] = explainer.explain_arrays(batch[:1], "channel:5", "gradcam", metrics=["confidence_change"])
    x = torch.from_numpy(batch[:1])
    cam = torch.from_numpy(result.maps["gradcam"])  # at input resolution
    with torch.no_grad():  # pytorch-grad-cam's CamMultImageConfidenceChange on the unit: y(x ⊙ map) − y(x)
        change = model.body[:4](x * cam)[0, 5].mean() - model.body[:4](x)[0, 5].mean()
    assert result.metrics["gradcam"]["confidence_change"] == pytest.approx(change.item(), abs=1e-5)


def test_probability_metrics_of_a_unit_are_refused_before_any_image(conv_unit, tmp_path: Path) -> None:
    """A unit's value has no probability: deletion was tried per image, failing with advice that did not apply."""
    import cv2

    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    args = ["evaluate", str(conv_unit[2]), str(image), "--target", "channel:5", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--metric", "deletion,sparseness"])
    assert result.exit_code == 2, result.output
    assert "deletion scores the target's probability, and the unit target channel:5 of body.3" in result.output
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    mprt = CliRunner().invoke(main, [*args, "--metric", "sparseness,mprt_ssim"])  # was a per-image failure
    assert mprt.exit_code == 2 and "mprt_ssim cannot score the unit target channel:5 of body.3" in mprt.output
    good = CliRunner().invoke(main, [*args, "--metric", "sparseness", "-q"])
    assert good.exit_code == 0, good.output


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_ablation_cam_of_a_unit_is_refused_before_any_image(conv_unit, tmp_path: Path, command: str) -> None:
    """Was a per-image failure after the other methods had run (README: checked before the first image)."""
    out = tmp_path / "out"
    args = [command, str(conv_unit[2]), str(tmp_path / "none.png"), "--target", "channel:5", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--method", "gradcam,ablationcam", "--metric", "sparseness"])
    assert result.exit_code == 2, result.output
    assert "ablationcam runs head graphs, which end at the class scores, not at the unit channel:5" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_float16_graph_unit_gradients_agree_with_float32(tmp_path: Path, batch: np.ndarray) -> None:
    import onnx
    from onnxcam_export.api import export_onnx_file

    float16 = pytest.importorskip("onnxconverter_common.float16")
    torch.manual_seed(0)
    source = tmp_path / "p32.onnx"
    torch.onnx.export(UnitNet().eval(), torch.randn(1, 3, 32, 32), source, dynamo=False, opset_version=18)
    relus = [n.output[0] for n in onnx.load(source).graph.node if n.op_type == "Relu"]
    onnx.save(float16.convert_float_to_float16(onnx.load(source), keep_io_types=True), tmp_path / "p16.onnx")
    grads = []
    for name in ("p32", "p16"):
        export_onnx_file(tmp_path / f"{name}.onnx", tmp_path / f"e{name}.onnx", [relus[0]], unit_layer=relus[1])
        explainer = Explainer(tmp_path / f"e{name}.onnx", provider="cpu")
        seed = np.stack([parse_unit("channel:3", explainer.metadata.unit).seed] * 2)
        grads.append(explainer.run(batch, np.full(2, -1, np.int64), unit_seed=seed).gradients[relus[0]])
    assert _rel(grads[1], grads[0]) < 1e-2  # float16 rounding (measured 4.5e-4), the unit tensor cast to float32


def test_unit_layer_before_every_explained_layer_is_refused_at_export(tmp_path: Path) -> None:
    """Every explained layer after the unit layer: no unit depends on them, so export refuses in one line (nothing
    written); with one layer before the unit layer the file is written and the later layer is named in a note."""
    from onnxcam_export.api import ExportError

    torch.manual_seed(0)
    model = UnitNet().eval()
    common = {"input_size": (32, 32), "exporter": "torchscript", "unit_layer": "body.1"}
    with pytest.raises(ExportError, match=r"^--unit-layer body\.1: the explained layer\(s\) body\.5 lie after it") as e:
        export_model(model, tmp_path / "dead.onnx", ["body.5"], log=lambda _: None, **common)
    assert "\n" not in str(e.value) and not (tmp_path / "dead.onnx").exists()
    log: list[str] = []
    export_model(model, tmp_path / "mixed.onnx", ["body.0", "body.5"], log=log.append, **common)
    assert (tmp_path / "mixed.onnx").exists()
    assert any(line.startswith("note: body.5 lie(s) after the unit layer body.1") for line in log), log
