"""Perturbation methods (Score-CAM, Ablation-CAM, occlusion, RISE) through :class:`onnxcam.Explainer` on exported
graphs, against pytorch-grad-cam 1.5.x (``ScoreCAM``, ``AblationCAM``) and ``captum.attr.Occlusion`` on the same
PyTorch module, layer, inputs and targets.

Tolerances: final [0, 1] maps 1e-4 absolute; occlusion attributions 1e-4 relative to their peak (onnxruntime and
PyTorch differ by float32 rounding, ~1e-6 relative, amplified by score differences of near-equal logits).
Ablation-CAM parity is on layers whose maps have zeros (post-ReLU): on signed maps the reference writes
``min − 1e7`` into a batch it already ablated, so its ablation value drifts by 1e7 per batch row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from method_cases import explain, gapnet_case, relative_error, resnet18_case
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from onnxcam.methods.ablation_cam import ablation_value, channels_to_ablate
from onnxcam.methods.request import MethodRequest
from onnxcam.methods.rise import rise
from onnxcam.methods.score_cam import align_corners_matrix, channel_masks, score_cam

MAP_TOL = 1e-4
ATTR_TOL = 1e-4
TARGETS = [3, 5]


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory):
    return gapnet_case(tmp_path_factory.mktemp("gapnet"), input_gradients=())


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory):
    return resnet18_case(tmp_path_factory.mktemp("resnet18"), ("layer3", "layer4"), input_gradients=())


def pgc_maps(cam_class, model: nn.Module, layers: list[str], x: np.ndarray, targets: list[int], **kw) -> np.ndarray:
    modules = dict(model.named_modules())
    with cam_class(model=model, target_layers=[modules[n] for n in layers], **kw) as cam:
        cam.batch_size = 64
        return cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in targets])


class LinearModel:
    """A :class:`ModelAccess` for unit tests: ``scores = W · mean_{HW}(x)`` (numpy, no graph)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights
        self.calls = 0

    def scores(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (x.mean(axis=(2, 3)) @ self.weights.T).astype(np.float32)


def test_align_corners_matrix_is_torch_upsampling_bilinear() -> None:
    rng = np.random.default_rng(0)
    for (h, w), (out_h, out_w) in [((7, 5), (32, 20)), ((1, 4), (9, 9)), ((3, 3), (3, 3)), ((4, 6), (1, 1))]:
        maps = rng.standard_normal((2, h, w)).astype(np.float32)
        ref = nn.UpsamplingBilinear2d(size=(out_h, out_w))(torch.from_numpy(maps)[None])[0].numpy()
        ours = np.einsum("yh,khw,xw->kyx", align_corners_matrix(out_h, h), maps, align_corners_matrix(out_w, w))
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_score_cam_constant_channel_gives_a_zero_mask_not_nan() -> None:
    acts = np.random.default_rng(0).random((1, 3, 4, 4)).astype(np.float32)
    acts[0, 1] = 2.5  # constant channel
    masks = channel_masks(acts[0], (16, 16))
    assert np.isfinite(masks).all() and not masks[1].any()
    assert masks[0].min() == 0.0 and masks[0].max() == pytest.approx(1.0, abs=1e-6)
    x = np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)
    model = LinearModel(np.random.default_rng(2).standard_normal((4, 3)))
    seed = np.eye(4, dtype=np.float32)[[2]]
    request = MethodRequest(model, x, seed, model.scores(x), {"l": acts}, options={"batch_size": 2})
    raw = score_cam(request, "l")
    assert raw.shape == (1, 4, 4) and np.isfinite(raw).all()
    # independent check: softmax of the linear model's scores on each masked input
    y = np.array([model.scores(x * m[None, None])[0, 2] for m in masks], np.float64)
    alpha = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
    np.testing.assert_allclose(raw[0], np.tensordot(alpha, acts[0], axes=1), rtol=1e-5)


@pytest.mark.parametrize("case", ["gapnet", pytest.param("resnet", marks=pytest.mark.slow)])
def test_score_cam_matches_pytorch_grad_cam(case: str, request: pytest.FixtureRequest) -> None:
    model, explainer, x = request.getfixturevalue(case)
    layers, targets, x = (["body.3"], TARGETS, x) if case == "gapnet" else (["layer4"], [281], x[:1])
    ref = pgc_maps(ScoreCAM, model, layers, x, targets)
    ours, _, results = explain(explainer, x, targets, "scorecam", layers)
    error = float(np.abs(ours - ref).max())
    assert error <= MAP_TOL, f"Score-CAM: max |ours − pytorch-grad-cam| = {error:.2e}"
    assert ours.max() > ours.min() and set(results[0].raw["scorecam"]) == set(layers)


@pytest.mark.parametrize("case", ["gapnet", pytest.param("resnet", marks=pytest.mark.slow)])
def test_ablation_cam_matches_pytorch_grad_cam(case: str, request: pytest.FixtureRequest) -> None:
    model, explainer, x = request.getfixturevalue(case)
    # resnet18: layer3, whose head graph is layer4 + pooling + fc (a real part of the network)
    layers, targets, x = (["body.3"], TARGETS, x) if case == "gapnet" else (["layer3"], [281], x[:1])
    ref = pgc_maps(AblationCAM, model, layers, x, targets)
    ours, _, _ = explain(explainer, x, targets, "ablationcam", layers)
    error = float(np.abs(ours - ref).max())
    assert error <= MAP_TOL, f"Ablation-CAM: max |ours − pytorch-grad-cam| = {error:.2e}"
    assert ours.max() > ours.min()


def test_ablation_fraction_matches_pytorch_grad_cam_channel_selection(gapnet) -> None:
    model, explainer, x = gapnet
    ref = pgc_maps(AblationCAM, model, ["body.3"], x, TARGETS, ratio_channels_to_ablate=0.25)
    ours, _, _ = explain(explainer, x, TARGETS, "ablationcam", ablation_fraction=0.25)
    assert float(np.abs(ours - ref).max()) <= MAP_TOL
    acts = explainer.run(x, np.array(TARGETS)).activations["body.3"]
    for image in acts:
        expected = AblationLayer().activations_to_be_ablated(image, 0.25)
        np.testing.assert_array_equal(channels_to_ablate(image, 0.25), np.unique(expected))


def test_ablation_value_is_the_reference_convention() -> None:
    acts = torch.randn(1, 4, 3, 3)
    for batch, expected_zero in [(acts.relu(), True), (acts, False)]:
        layer = AblationLayer()
        layer.indices = np.array([2])
        layer.set_next_batch(0, batch, 1)
        ablated = layer(None)[0, 2]
        value = ablation_value(batch[0].numpy())
        assert (value == 0) == expected_zero
        np.testing.assert_array_equal(ablated.numpy(), np.full((3, 3), value, np.float32))


@pytest.mark.parametrize(
    "options",
    [
        {"patch": 6, "stride": 4, "baseline": 0.2},  # last window cut off: ⌈(32 − 6)/4⌉ + 1 = 8 positions
        {"patch": (5, 8), "stride": (5, 3), "baseline": -0.5, "batch_size": 7},
        {"patch": 8, "stride": 8, "score": "probability"},
    ],
)
def test_occlusion_matches_captum(gapnet, options: dict) -> None:
    model, explainer, x = gapnet
    patch = options["patch"] if isinstance(options["patch"], tuple) else (options["patch"],) * 2
    stride = options["stride"] if isinstance(options["stride"], tuple) else (options["stride"],) * 2

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        return out.softmax(1) if options.get("score") == "probability" else out

    ref = Occlusion(forward).attribute(
        torch.from_numpy(x),
        sliding_window_shapes=(3, *patch),
        strides=(3, *stride),
        baselines=options.get("baseline", 0.0),
        target=TARGETS,
    )
    maps, ours, _ = explain(explainer, x, TARGETS, "occlusion", **options)
    assert relative_error(ours, ref.numpy()) <= ATTR_TOL
    assert maps.shape == (2, 32, 32) and maps.min() == 0.0


@pytest.mark.slow
def test_occlusion_matches_captum_on_resnet18(resnet) -> None:
    model, explainer, x = resnet
    options = {"patch": 24, "stride": 16, "baseline": np.zeros((3, 1, 1), np.float32)}
    ref = Occlusion(model).attribute(
        torch.from_numpy(x),
        sliding_window_shapes=(3, 24, 24),
        strides=(3, 16, 16),
        baselines=0.0,
        target=[281, 967],
        perturbations_per_eval=16,
    )
    _, ours, _ = explain(explainer, x, [281, 967], "occlusion", **options)
    assert relative_error(ours, ref.numpy()) <= ATTR_TOL


def test_occlusion_rejects_a_patch_larger_than_the_input(gapnet) -> None:
    _, explainer, x = gapnet
    with pytest.raises(ValueError, match="patch 40 is larger than the input"):
        explain(explainer, x, TARGETS, "occlusion", patch=40)
    with pytest.raises(ValueError, match="option 'score' must be one of"):
        explain(explainer, x, TARGETS, "occlusion", score="margin")


class RegionNet(nn.Module):
    """Class 0's logit is 12 × the mean of a blurred input over the top-left 10×10 corner; class 1's is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1, bias=False), nn.ReLU())
        nn.init.constant_(self.features[0].weight, 1 / 27)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.features(x)[:, 0, :10, :10].mean((1, 2)) * 12
        return torch.stack([y0, torch.zeros_like(y0)], 1)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory):
    from onnxcam_export.api import export_model

    from onnxcam.explainer import Explainer

    path = tmp_path_factory.mktemp("region") / "region.onnx"
    export_model(RegionNet().eval(), path, ["features"], (32, 32), exporter="torchscript", log=lambda _: None)
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    return Explainer(path, provider="cpu", threads=2), x


def test_rise_peaks_where_the_score_comes_from(region) -> None:
    explainer, x = region
    maps, saliency, _ = explain(explainer, x, [0], "rise", masks=400, cells=4, random_seed=3)
    assert saliency.shape == (1, 1, 32, 32) and maps.shape == (1, 32, 32)
    inside = maps[0, :10, :10].mean()
    outside = np.concatenate([maps[0, 10:].ravel(), maps[0, :10, 10:].ravel()]).mean()
    assert inside > outside + 0.3, (inside, outside)
    peak = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert max(peak) < 10 + 8, peak  # within a mask cell of the region


def test_rise_is_reproducible_and_independent_of_batch_size(region) -> None:
    explainer, x = region
    first = explain(explainer, x, [0], "rise", masks=96, random_seed=7)[1]
    again = explain(explainer, x, [0], "rise", masks=96, random_seed=7, batch_size=10)[1]
    other = explain(explainer, x, [0], "rise", masks=96, random_seed=8)[1]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_rise_is_the_score_weighted_mean_of_its_masks() -> None:
    """Against an independent evaluation of ``Σ_n p(x ⊙ m_n) m_n / (N p)`` with a stand-in model."""
    from onnxcam.methods.rise import rise_masks

    x = np.random.default_rng(0).random((2, 3, 12, 12)).astype(np.float32)
    model = LinearModel(np.random.default_rng(1).standard_normal((3, 3)))
    seed = np.eye(3, dtype=np.float32)[[0, 2]]
    options = {"masks": 20, "cells": 3, "p": 0.4, "random_seed": 5, "batch_size": 6}
    ours = rise(MethodRequest(model, x, seed, model.scores(x), options=options))
    grids, shifts = (np.random.default_rng(s) for s in np.random.SeedSequence(5).spawn(2))
    masks = rise_masks(20, (12, 12), 3, 0.4, grids, shifts)
    assert set(np.unique(masks.round(6))) - {0.0, 1.0}, "masks are soft (bilinear)"
    for n in range(2):
        z = np.stack([model.scores(x[n : n + 1] * m)[0] for m in masks]).astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p = (p / p.sum(1, keepdims=True))[:, [0, 2][n]]
        np.testing.assert_allclose(ours[n, 0], np.tensordot(p, masks, axes=1) / (20 * 0.4), rtol=1e-5)
