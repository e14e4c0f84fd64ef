"""CAM methods and post-processing: parity with pytorch-grad-cam 1.5.x on the same activations and gradients.

The reference classes are fed our random arrays directly (``get_cam_image``, ``compute_cam_per_layer``,
``aggregate_multi_layers``), so any difference comes from the map math, not from the model.
Tolerance: 1e-5 absolute on normalised maps, 1e-5 relative (to the map's peak) on raw maps.
Eigen-CAM-style maps (Eigen-CAM, Eigen-Grad-CAM, any ``eigen_smooth=True``) are compared up to a per-image sign:
the first singular vector of an SVD is defined only up to ``(u, v) → (−u, −v)``, and our batched
``svd(full_matrices=False)`` and the reference's per-image ``svd(full_matrices=True)`` are different LAPACK calls
that may pick different signs. Every other map must match with its own sign.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from onnxcam import postprocess
from onnxcam.methods import available_methods, class_activation_map, get_method, grad_cam, register

torch = pytest.importorskip("torch")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "gradcamelementwise": pgc.GradCAMElementWise,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
}
PROJECTION_METHODS = {"eigencam", "eigengradcam"}
INPUT_HW = (20, 28)  # non-square, so a swapped (W, H) would show
TOL = 1e-5


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()


def _layer_data(seed: int, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random activations and gradients with negatives; image 1 has an all-zero gradient, image 0 some zero rows."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(0.3, 1.0, shape).astype(np.float32)
    grads = rng.normal(0.0, 0.05, shape).astype(np.float32)
    grads[1] = 0
    grads[0, :, 0, :] = 0
    return acts, grads


LAYERS = [_layer_data(1, (3, 6, 5, 7)), _layer_data(2, (3, 9, 3, 4))]


def _reference_cam(name: str, n_layers: int = 1):
    model = _tiny_model()
    return REFERENCE[name](model, [model[0], model[2]][:n_layers])


def _reference_raw(name: str, acts: np.ndarray, grads: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    cam = _reference_cam(name)
    return cam.get_cam_image(None, cam.target_layers[0], None, acts.copy(), grads.copy(), eigen_smooth)


def _align_sign(ours: np.ndarray, ref: np.ndarray, may_flip: bool) -> np.ndarray:
    """Per image, flip ``ours`` when that brings it closer to ``ref`` — only for SVD-projection maps."""
    if not may_flip:
        return ours
    dots = np.einsum("nhw,nhw->n", ours.astype(np.float64), ref.astype(np.float64))
    return np.where(dots[:, None, None] < 0, -ours, ours)


def _assert_raw_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    scale = np.abs(ref).max(axis=(1, 2), keepdims=True)
    worst = (np.abs(ours - ref) / np.maximum(scale, 1e-12)).max()
    assert worst <= TOL, f"raw map differs by {worst:.2e} of its peak"


@pytest.mark.parametrize("eigen_smooth", [False, True])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_raw_and_normalised_map_match_reference(name: str, eigen_smooth: bool) -> None:
    acts, grads = LAYERS[0]
    ref = _reference_raw(name, acts, grads, eigen_smooth)
    ours = get_method(name)(acts, grads, eigen_smooth=eigen_smooth)
    ours = _align_sign(ours, ref, name in PROJECTION_METHODS or eigen_smooth)
    _assert_raw_close(ours, ref)
    expected = scale_cam_image(np.maximum(ref, 0), INPUT_HW[::-1])
    np.testing.assert_allclose(postprocess.layer_map(ours, INPUT_HW[::-1]), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("eigen_smooth", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_full_pipeline_and_fusion_match_reference(name: str, n_layers: int, eigen_smooth: bool) -> None:
    """Our ``postprocess`` vs ``aggregate_multi_layers(compute_cam_per_layer(...))`` on 1 or 2 layers of other sizes."""
    layers = LAYERS[:n_layers]
    cam = _reference_cam(name, n_layers)
    cam.activations_and_grads.activations = [torch.from_numpy(a.copy()) for a, _ in layers]
    cam.activations_and_grads.gradients = [torch.from_numpy(g.copy()) for _, g in layers]
    input_tensor = torch.zeros(3, 3, *INPUT_HW)
    expected = cam.aggregate_multi_layers(cam.compute_cam_per_layer(input_tensor, None, eigen_smooth))

    method = get_method(name)
    raws = [
        _align_sign(method(a, g, eigen_smooth=eigen_smooth), _reference_raw(name, a, g, eigen_smooth), True)
        if name in PROJECTION_METHODS or eigen_smooth
        else method(a, g, eigen_smooth=eigen_smooth)
        for a, g in layers
    ]
    ours = postprocess.postprocess(raws, size=INPUT_HW[::-1])
    assert ours.shape == expected.shape == (3, *INPUT_HW)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    assert ours.max() > 0.99  # the test data give non-trivial maps


@pytest.mark.parametrize("eigen_smooth", [False, True])
@pytest.mark.parametrize("name", [*REFERENCE, "cam"])
def test_all_zero_inputs_give_an_all_zero_map(name: str, eigen_smooth: bool) -> None:
    zeros = np.zeros((2, 4, 3, 5), np.float32)
    method = get_method(name)
    raw = method(zeros, zeros, eigen_smooth=eigen_smooth, head_weights=np.zeros((2, 4), np.float32))
    final = postprocess.postprocess([raw], size=(10, 6))
    assert np.isfinite(raw).all() and np.isfinite(final).all()
    assert not raw.any() and not final.any() and final.shape == (2, 6, 10)


@pytest.mark.parametrize("name", [n for n in REFERENCE if n not in PROJECTION_METHODS])
def test_zero_gradient_image_gives_zero_map_while_others_do_not(name: str) -> None:
    acts, grads = LAYERS[0]
    final = postprocess.postprocess([get_method(name)(acts, grads)], size=INPUT_HW[::-1])
    assert not final[1].any()
    assert final[0].max() > 0.99 and final[2].max() > 0.99


def test_float64_inputs_are_computed_in_float32() -> None:
    acts, grads = LAYERS[0]
    out = get_method("gradcam++")(acts.astype(np.float64), grads.astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, get_method("gradcam++")(acts, grads))


def test_cam_equals_grad_cam_times_z_on_a_gap_linear_head() -> None:
    """For GAP→Linear, ``G = w^c / Z`` everywhere, so CAM = Z · Grad-CAM (METHODS.md); A and G from torch autograd."""
    model = _tiny_model()
    x = torch.randn(2, 3, *INPUT_HW, generator=torch.Generator().manual_seed(3))
    feats = model[:4](x).detach().requires_grad_(True)
    logits = model[4:](feats)
    target = logits.argmax(dim=1)
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feats)
    acts, grads = feats.detach().numpy(), grads.numpy()
    head_weights = model[6].weight.detach().numpy()[target.numpy()]

    cam = get_method("cam")(acts, head_weights=head_weights)
    np.testing.assert_allclose(cam, class_activation_map(acts, head_weights))
    z = acts.shape[2] * acts.shape[3]
    np.testing.assert_allclose(cam, z * grad_cam(acts, grads), rtol=1e-4, atol=1e-5 * np.abs(cam).max())
    expected = np.einsum("nk,nkhw->nhw", head_weights, acts)
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-6)


def test_registry_names_flags_and_errors() -> None:
    assert {*REFERENCE, "cam"} <= set(available_methods())
    assert get_method("Grad-CAM") is get_method("grad_cam") is get_method("gradcam")
    assert get_method("GradCAM++").name == "gradcam++"
    assert not get_method("eigencam").needs_gradients
    assert all(get_method(n).needs_gradients for n in REFERENCE if n != "eigencam")
    cam = get_method("cam")
    assert cam.needs_head_weights and not cam.needs_gradients
    with pytest.raises(ValueError, match="available: ablationcam, cam, deconvnet, eigencam"):
        get_method("scorecam++")
    with pytest.raises(ValueError, match="already registered"):
        register(get_method("gradcam"))
    acts, grads = LAYERS[0]
    with pytest.raises(ValueError, match="needs gradients"):
        get_method("gradcam")(acts)
    with pytest.raises(ValueError, match="differs from activations"):
        get_method("layercam")(acts, grads[:, :3])
    with pytest.raises(ValueError, match=r"\[N, K, h, w\]"):
        get_method("eigencam")(acts[0])
    with pytest.raises(ValueError, match="head weights"):
        cam(acts)
    assert get_method("eigencam")(acts).shape == (3, 5, 7)  # no gradients needed


def test_normalize_and_resize_match_scale_cam_image() -> None:
    maps = np.random.default_rng(4).normal(size=(3, 5, 7)).astype(np.float32)
    maps[2] = 1.5  # a constant map normalises to zero
    np.testing.assert_array_equal(postprocess.normalize(maps), scale_cam_image(maps))
    np.testing.assert_array_equal(postprocess.scale(maps, (28, 20)), scale_cam_image(maps, (28, 20)))
    assert not postprocess.normalize(maps)[2].any()
    single = postprocess.resize(maps[0], (28, 20))
    assert single.shape == (20, 28)
    np.testing.assert_array_equal(single, postprocess.resize(maps, (28, 20))[0])


def test_fuse_rejects_maps_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        postprocess.fuse([np.zeros((1, 4, 4)), np.zeros((1, 2, 2))])
    with pytest.raises(ValueError, match="no layer maps"):
        postprocess.postprocess([])


def test_map_stats() -> None:
    maps = np.zeros((3, 4, 5), np.float32)
    maps[0] = 1.0
    maps[1, 2, 3] = 1.0
    maps[2, :2] = 0.75
    stats = postprocess.map_stats(maps)
    assert [s.frac_above for s in stats] == [1.0, 0.05, 0.5]
    assert stats[0].entropy == pytest.approx(1.0) and stats[1].entropy == pytest.approx(0.0)
    assert stats[2].entropy == pytest.approx(np.log(10) / np.log(20))
    assert (stats[1].min, stats[1].max, stats[1].mean) == (0.0, 1.0, pytest.approx(0.05))
    zero = postprocess.map_stats(np.zeros((4, 4)))[0]
    assert zero.entropy == 0.0 and zero.frac_above == 0.0
    assert stats[2].to_dict()["threshold"] == 0.5


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys, onnxcam.methods, onnxcam.postprocess, onnxcam.visual; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
