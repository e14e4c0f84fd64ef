"""The peers' newer CAMs through :class:`onnxcam.Explainer` on the exported :class:`GapNet` (32×32; layers ``body.3``,
16 channels at 16×16, and ``body.1``, 8 at 32×32, whose gradient varies with the input), against the peer that has
each method on the same PyTorch module, inputs and targets.
``aug_smooth`` (every method): Grad-CAM's final maps equal pytorch-grad-cam's ``aug_smooth=True`` ones, 1e-4.

pytorch-grad-cam 1.5.x: KPCA-CAM, FinerCAM — final [0, 1] maps, 1e-4 absolute.
torchcam 0.5: Smooth Grad-CAM++, SS-CAM, IS-CAM — the raw layer maps (torchcam's ``normalized=False``; ReLU'd for the
Score-CAM family as torchcam does), 1e-4 relative to their peak, with the *same noise*: torchcam's noise sampler is
replaced by one returning samples we also give onnxcam through the ``noise`` option. Smooth Grad-CAM++: torchcam's
code weights with the last noisy sample's gradient and activations (its documented formula: the input's), so the last
injected sample is zero noise, which makes both the same.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from method_cases import explain, gapnet_case, relative_error
from pytorch_grad_cam import KPCA_CAM, FinerCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from torchcam.methods import ISCAM, SSCAM, SmoothGradCAMpp

from onnxcam.cli import main
from onnxcam.methods.finer_cam import finer_seed, similar_classes

MAP_TOL = 1e-4
RAW_TOL = 1e-4
TARGETS = [3, 5]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("gapnet")


@pytest.fixture(scope="module")
def gapnet(folder):
    return gapnet_case(folder, layers=("body.1", "body.3"), input_gradients=())


def raw_map(explainer, x: np.ndarray, name: str, layer: str = "body.3", **options: object) -> np.ndarray:
    results = explainer.explain_arrays(x, TARGETS, [name], [layer], options=options)
    return np.stack([r.raw[name][layer] for r in results])


def test_kpca_cam_matches_pytorch_grad_cam(gapnet) -> None:
    model, explainer, x = gapnet
    with KPCA_CAM(model=model, target_layers=[model.body[3]]) as cam:
        reference = cam(input_tensor=torch.from_numpy(x), targets=None)
    ours, _, _ = explain(explainer, x, [-1, -1], "kpcacam", ["body.3"])
    assert np.abs(ours - reference).max() <= MAP_TOL


def test_finer_seed_is_the_gradient_of_finer_weighted_target() -> None:
    z = np.random.default_rng(0).standard_normal((3, 12))
    main = np.array([0, 4, 11])
    similar = similar_classes(z, main, 3)
    for alpha in (1.0, 0.6):
        ours = finer_seed(z, main, similar, alpha)
        for n in range(3):
            logits = torch.tensor(z[n], requires_grad=True)
            FinerWeightedTarget(int(main[n]), [int(j) for j in similar[n]], alpha)(logits).backward()
            np.testing.assert_allclose(ours[n], logits.grad.numpy(), atol=1e-6)


def test_finer_cam_matches_pytorch_grad_cam(gapnet) -> None:
    model, explainer, x = gapnet
    with FinerCAM(model=model, target_layers=[model.body[3]]) as cam:
        reference = cam(torch.from_numpy(x), targets=None, alpha=0.6)  # each image's top-1 vs its 3 nearest classes
    ours, _, _ = explain(explainer, x, [-1, -1], "finercam", ["body.3"], alpha=0.6)
    assert np.abs(ours - reference).max() <= MAP_TOL


def test_finer_cam_refuses_a_class_set(gapnet) -> None:
    _, explainer, x = gapnet
    with pytest.raises(ValueError, match="FinerCAM explains one class"):
        explainer.explain_arrays(x, "1,2", ["finercam"], ["body.3"])


def injected(cam, samples: list[torch.Tensor]) -> None:
    """Make ``cam``'s noise sampler return ``samples`` in order."""
    queue = iter(samples)
    cam._distrib = type("Injected", (), {"sample": lambda self, size: next(queue)})()


def test_smooth_gradcam_plusplus_matches_torchcam_with_the_same_noise(gapnet) -> None:
    model, explainer, x = gapnet
    noise = np.random.default_rng(2).normal(0, 0.3, (2, 4, *x.shape[1:])).astype(np.float32)
    noise[:, -1] = 0  # see the module docstring
    with SmoothGradCAMpp(model, "body.1", num_samples=4) as cam:
        injected(cam, [torch.from_numpy(noise[:, m].copy()) for m in range(4)])
        scores = model(torch.from_numpy(x))
        reference = cam(TARGETS, scores, normalized=False)[0].detach().numpy()
    ours = raw_map(explainer, x, "smoothgradcam++", "body.1", noise=noise)
    assert relative_error(ours, reference) <= RAW_TOL


def test_noise_methods_are_reproducible_with_a_seed(gapnet) -> None:
    _, explainer, x = gapnet
    for name, options in [("smoothgradcam++", {"n": 3}), ("sscam", {"n": 2})]:
        first = raw_map(explainer, x, name, "body.1", random_seed=7, **options)
        np.testing.assert_array_equal(first, raw_map(explainer, x, name, "body.1", random_seed=7, **options))
        assert not np.allclose(first, raw_map(explainer, x, name, "body.1", random_seed=8, **options), atol=1e-6)


@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_smoothed_score_cams_match_torchcam(gapnet, method: str) -> None:
    model, explainer, x = gapnet
    n = 3
    options: dict[str, object] = {"n": n}
    if method == "sscam":
        noise = np.random.default_rng(3).normal(0, 2.0, (2, n, 16, *x.shape[2:])).astype(np.float32)
        options["noise"] = noise
        cam = SSCAM(model, "body.3", num_samples=n, batch_size=64)
        injected(cam, [torch.from_numpy(noise[:, m].copy()) for m in range(n)])
    else:
        cam = ISCAM(model, "body.3", num_samples=n, batch_size=64)
    with cam, torch.no_grad():
        model(torch.from_numpy(x))
        reference = cam(TARGETS, normalized=False)[0].numpy()
    ours = np.maximum(raw_map(explainer, x, method, **options), 0)
    assert relative_error(ours, reference) <= RAW_TOL


def test_aug_smooth_matches_pytorch_grad_cam(gapnet) -> None:
    model, explainer, x = gapnet
    with GradCAM(model=model, target_layers=[model.body[3]]) as cam:
        reference = cam(torch.from_numpy(x), [ClassifierOutputTarget(t) for t in TARGETS], aug_smooth=True)
    results = explainer.explain_arrays(x, TARGETS, ["gradcam", "kpcacam"], ["body.3"], aug_smooth=True)
    ours = np.stack([r.maps["gradcam"] for r in results])
    assert np.abs(ours - reference).max() <= MAP_TOL
    plain = explainer.explain_arrays(x, TARGETS, ["kpcacam"], ["body.3"])
    assert not np.allclose(results[0].maps["kpcacam"], plain[0].maps["kpcacam"], atol=1e-3)  # every method smooths


def test_aug_smooth_on_the_command_line(gapnet, folder, tmp_path) -> None:
    _, explainer, _ = gapnet
    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = [str(folder / "gapnet.onnx"), str(image), "--out", str(out), "--layer", "body.3", "--save", "npy", "-q"]
    result = CliRunner().invoke(main, ["explain", *args, "--aug-smooth"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = explainer.explain([str(image)], layers=["body.3"], aug_smooth=True)[0].maps["gradcam"]
    (saved,) = out.glob("noise*.gradcam.npy")
    np.testing.assert_allclose(np.load(saved), expected, atol=1e-6)


@pytest.mark.parametrize(("method", "hint"), [("fullgrad", "--bias-gradients"), ("shapleycam", "--hvp")])
def test_method_needing_an_export_option_is_a_usage_error(gapnet, folder, tmp_path, method: str, hint: str) -> None:
    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    args = [str(folder / "gapnet.onnx"), str(image), "--out", str(tmp_path / "out"), "--method", method]
    result = CliRunner().invoke(main, ["explain", *args])
    assert result.exit_code == 2 and hint in result.output, result.output
