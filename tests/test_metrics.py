"""Faithfulness metrics against independent references.

- Noisy linear imputation (noise 0) against pytorch-grad-cam's ``NoisyLinearImputer`` (scipy ``spsolve``):
  max |difference| ≤ 1e-6 (measured ≤ 1.3e-7: both are exact sparse solves, theirs is cast to float32).
- Confidence change / drop / increase, Average Drop and ROAD (MoRF 80, LeRF 20, combined; noise 0) against
  pytorch-grad-cam's metric classes on the same small model (PyTorch there, its exported graph on onnxruntime here),
  same maps: |difference| ≤ 1e-6 (values of order 1e-4–1e-1; measured ≤ 2e-8).
- Deletion / insertion against a literal re-implementation of RISE's ``CausalMetric`` loop (scipy Gaussian blur) on
  a numpy model: |difference| ≤ 1e-6; and properties that fail if the pixel order or the baselines were wrong.
- Slow: on the real pretrained demo model and photos, Grad-CAM beats smooth random maps on deletion and insertion.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from scipy.ndimage import gaussian_filter
from small_models import GapNet, export_gapnet

from onnxcam.explainer import Explainer, one_hot_seed
from onnxcam.metrics import available_metrics, evaluate_maps, get_metric, resolve_metrics
from onnxcam.metrics.base import check_options, convert_option, probability
from onnxcam.metrics.deletion import baseline, curve_inputs, saliency_rank, trapezoid_auc
from onnxcam.metrics.imputation import linear_imputation, noisy_linear_imputation
from onnxcam.metrics.road import removal_mask
from onnxcam.preprocess import preprocess_batch

PARITY = 1e-6  # imputed pixel values (measured ≤ 1.3e-7)
METRIC_PARITY = 1e-6  # metric values of the small model, of order 1e-4–1e-1 (measured ≤ 2e-8)
# pytorch-grad-cam's imputer calls numpy functions on torch tensors (a NumPy 2 deprecation inside their code)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


def smooth_maps(rng: np.random.Generator, n: int, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Random smooth maps ``[n, H, W]`` in [0, 1] (blurred noise, min-max normalised): no ties."""
    maps = np.stack([cv2.GaussianBlur(rng.random(size), (0, 0), sigma) for _ in range(n)])
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return ((maps - low) / (high - low)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- imputation


@pytest.mark.parametrize(("size", "percentile", "order"), [((40, 40), 10, "morf"), ((33, 47), 50, "lerf")])
def test_linear_imputation_matches_reference(size: tuple[int, int], percentile: float, order: str) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, *size)).astype(np.float32)
    removed = removal_mask(smooth_maps(rng, 1, size, 4)[0], percentile, order)
    reference = NoisyLinearImputer(noise=0.0)(torch.from_numpy(image), torch.from_numpy(np.float32(~removed)))
    ours = linear_imputation(image, removed)
    assert np.abs(ours - reference.numpy()).max() <= PARITY
    assert np.array_equal(ours[:, ~removed], image[:, ~removed])  # kept pixels untouched


@pytest.mark.parametrize("percentile", [10, 80])
def test_linear_imputation_matches_reference_at_224(percentile: float) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(3, 224, 224)).astype(np.float32)
    removed = removal_mask(smooth_maps(rng, 1, (224, 224), 20)[0], percentile, "morf")
    reference = NoisyLinearImputer(noise=0.0)(torch.from_numpy(image), torch.from_numpy(np.float32(~removed)))
    assert np.abs(linear_imputation(image, removed) - reference.numpy()).max() <= PARITY


def test_linear_imputation_solves_the_neighbour_mean_equations() -> None:
    """Independent of the reference: every removed pixel equals the weighted mean of its in-image neighbours."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 21, 17))
    removed = rng.random((21, 17)) < 0.7
    out = linear_imputation(image, removed)
    padded = np.pad(out, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((21, 17)), 1)
    total, weight = np.zeros_like(out), np.zeros((21, 17))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) != (0, 0):
                w = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                total += w * padded[:, 1 + dy : 22 + dy, 1 + dx : 18 + dx]
                weight += w * inside[1 + dy : 22 + dy, 1 + dx : 18 + dx]
    assert np.abs((total / weight - out)[:, removed]).max() < 1e-9


def test_imputation_noise_and_edge_cases() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(size=(3, 64, 64)).astype(np.float32)
    removed = removal_mask(smooth_maps(rng, 1, (64, 64), 6)[0], 50, "morf")
    clean = linear_imputation(image, removed)
    noisy = noisy_linear_imputation(image, removed, 0.01, np.random.default_rng(7))
    again = noisy_linear_imputation(image, removed, 0.01, np.random.default_rng(7))
    assert np.array_equal(noisy, again)  # seedable
    residual = (noisy - clean)[:, removed]
    assert residual.std() == pytest.approx(0.01, rel=0.05) and abs(residual.mean()) < 1e-3
    assert np.array_equal(noisy[:, ~removed], clean[:, ~removed])
    assert np.array_equal(linear_imputation(image, np.zeros((64, 64), bool)), image)
    assert not linear_imputation(image, np.ones((64, 64), bool)).any()  # nothing kept: the normalised mean, 0


def test_imputation_without_scipy_is_refused_in_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)  # what an install without the extra sees
    with pytest.raises(ImportError, match=r"^ROAD's imputation needs scipy: pip install 'onnxcam\[metrics\]'$"):
        linear_imputation(np.zeros((1, 4, 4)), np.eye(4, dtype=bool))


# ---------------------------------------------------------------------------------------- parity with pytorch-grad-cam


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explainer, torch.nn.Module]:
    """The exported small classifier and its PyTorch twin (same seed, same weights)."""
    path = export_gapnet(tmp_path_factory.mktemp("gapnet") / "gapnet.onnx")
    torch.manual_seed(0)
    return Explainer(path, provider="cpu"), GapNet().eval()


@pytest.fixture(scope="module")
def batch(gapnet: tuple[Explainer, torch.nn.Module]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Inputs, their top-1 classes, one-hot seeds and maps of two kinds: Grad-CAM and smooth random maps."""
    explainer, _ = gapnet
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    explanations = explainer.explain_arrays(x, methods=["gradcam"])
    classes = np.array([e.class_index for e in explanations])
    maps = {
        "gradcam": np.stack([e.maps["gradcam"] for e in explanations]),
        "random": smooth_maps(rng, 3, (32, 32), 3),
    }
    return x, classes, one_hot_seed(classes, explainer.score_shape), maps


def reference(metric: object, x: np.ndarray, cams: np.ndarray, targets: list, model: torch.nn.Module) -> np.ndarray:
    return np.asarray(metric(torch.from_numpy(x), cams, targets, model), np.float64).ravel()


def test_confidence_metrics_match_pytorch_grad_cam(gapnet, batch) -> None:
    explainer, model = gapnet
    x, classes, seed, maps = batch
    logit_targets = [ClassifierOutputTarget(int(c)) for c in classes]
    softmax_targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    names = ["confidence_change", "drop_in_confidence", "increase_in_confidence"]
    for options, targets in (({}, logit_targets), ({"metric_score": "probability"}, softmax_targets)):
        ours = evaluate_maps(explainer, x, seed, maps, [*names, "average_drop"], options)
        for method, cams in maps.items():
            expected = {
                name: reference(cls(), x, cams, targets, model)
                for name, cls in zip(
                    names, (CamMultImageConfidenceChange, DropInConfidence, IncreaseInConfidence), strict=True
                )
            }
            with torch.no_grad():
                p = torch.softmax(model(torch.from_numpy(x)), 1)[range(3), classes].numpy()
                pm = torch.softmax(model(torch.from_numpy(x * cams[:, None])), 1)[range(3), classes].numpy()
            expected["average_drop"] = np.maximum(p - pm, 0) / p
            for name, values in expected.items():
                got = np.array([ours[n][method][name] for n in range(3)])
                np.testing.assert_allclose(got, values, atol=METRIC_PARITY, err_msg=f"{method} {name} {options}")


def road_reference(order: str, percentile: float) -> PerturbationConfidenceMetric:
    """pytorch-grad-cam's ROAD metric at ``percentile`` with a noiseless imputer (their classes, noise 0)."""
    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    return PerturbationConfidenceMetric(remove(percentile, NoisyLinearImputer(noise=0.0)))


def test_road_matches_pytorch_grad_cam(gapnet, batch) -> None:
    explainer, model = gapnet
    x, classes, seed, maps = batch
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    percentiles = [20, 50, 80]
    options = {"road_noise": 0, "road_percentiles": ",".join(map(str, percentiles))}
    ours = evaluate_maps(
        explainer, x, seed, maps, resolve_metrics(["road_morf", "road_lerf", "road_combined"]), options
    )
    for method, cams in maps.items():
        morf_avg = reference(
            AveragerAcrossThresholds(lambda p: road_reference("morf", p), percentiles), x, cams, targets, model
        )
        lerf_avg = reference(
            AveragerAcrossThresholds(lambda p: road_reference("lerf", p), percentiles), x, cams, targets, model
        )
        expected = {
            "road_morf": reference(road_reference("morf", 80), x, cams, targets, model),
            "road_lerf": reference(road_reference("lerf", 20), x, cams, targets, model),
            "road_combined": (lerf_avg - morf_avg) / 2,
        }
        for name, values in expected.items():
            got = np.array([ours[n][method][name] for n in range(3)])
            np.testing.assert_allclose(got, values, atol=METRIC_PARITY, err_msg=f"{method} {name}")


def test_road_noise_is_seeded_and_independent_of_the_batch(gapnet, batch) -> None:
    explainer, _ = gapnet
    x, _, seed, maps = batch
    whole = evaluate_maps(explainer, x, seed, maps, ["road_morf"], {"road_seed": 3})
    alone = evaluate_maps(
        explainer, x[2:], seed[2:], {m: v[2:] for m, v in maps.items()}, ["road_morf"], {"road_seed": "3"}
    )
    assert whole[2] == alone[0]
    other = evaluate_maps(explainer, x, seed, maps, ["road_morf"], {"road_seed": 4})
    assert other[0] != whole[0]


# ------------------------------------------------------------------------------------------- deletion and insertion


class LinearModel:
    """A numpy classifier (ModelAccess.scores only): logits ``W · x`` for 3 classes."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.weights = np.random.default_rng(seed).normal(size=(3, int(np.prod(shape)))) / 20

    def scores(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1).astype(np.float64) @ self.weights.T).astype(np.float32)


class RegionModel:
    """Class 0's logit is ``8 · (mean of x² over one region − 1/2)``, class 1's is 0: only that region matters."""

    def __init__(self, region: tuple[slice, slice]) -> None:
        self.region = region

    def scores(self, x: np.ndarray) -> np.ndarray:
        energy = (x[:, :, self.region[0], self.region[1]].astype(np.float64) ** 2).mean(axis=(1, 2, 3))
        return np.stack([8 * (energy - 0.5), np.zeros_like(energy)], axis=1).astype(np.float32)


def rise_auc(model, x: np.ndarray, cam: np.ndarray, target: int, steps: int, mode: str) -> float:
    """RISE's ``CausalMetric.single_run`` (Petsiuk et al.'s code) transcribed to numpy, blur from scipy."""
    c, h, w = x.shape
    step = h * w // steps
    blurred = np.stack([gaussian_filter(ch.astype(np.float64), 5, truncate=1.0, mode="mirror") for ch in x])
    start, finish = (x.copy(), np.zeros_like(x)) if mode == "del" else (blurred.astype(np.float32), x.copy())
    order = np.flip(np.argsort(cam.reshape(-1)))
    values = np.empty(steps + 1)
    for i in range(steps + 1):
        logits = model.scores(start[None]).astype(np.float64)[0]
        values[i] = np.exp(logits[target] - logits.max()) / np.exp(logits - logits.max()).sum()
        coords = order[step * i : step * (i + 1)]
        start.reshape(c, -1)[:, coords] = finish.reshape(c, -1)[:, coords]
    return float((values.sum() - values[0] / 2 - values[-1] / 2) / (len(values) - 1))


def test_deletion_and_insertion_match_rise() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    model = LinearModel(x.shape[1:])
    classes = model.scores(x).argmax(axis=1)
    cams = smooth_maps(rng, 2, (32, 32), 2)
    ours = evaluate_maps(
        model, x, one_hot_seed(classes, (3,)), {"m": cams}, ["deletion", "insertion"], {"curve_steps": 16}
    )
    for n in range(2):
        for name, mode in (("deletion", "del"), ("insertion", "ins")):
            expected = rise_auc(model, x[n], cams[n], int(classes[n]), 16, mode)
            assert ours[n]["m"][name] == pytest.approx(expected, abs=1e-6)


def test_deletion_and_insertion_rank_a_faithful_map_first() -> None:
    x = np.where(np.indices((32, 32)).sum(axis=0) % 2 == 0, 1.0, -1.0)[None].repeat(3, 0)[None].astype(np.float32)
    model = RegionModel((slice(0, 12), slice(0, 12)))
    yy, xx = np.mgrid[0:32, 0:32]
    right = np.exp(-((yy - 6) ** 2 + (xx - 6) ** 2) / 100.0).astype(np.float32)[None]
    wrong = right[:, ::-1, ::-1].copy()
    seed = np.array([[1.0, 0.0]], np.float32)
    result = evaluate_maps(model, x, seed, {"right": right, "wrong": wrong}, ["deletion", "insertion"])[0]
    assert result["right"]["deletion"] < result["wrong"]["deletion"] - 0.2
    assert result["right"]["insertion"] > result["wrong"]["insertion"] + 0.2
    # the baselines: deleting everything zeroes x², the blurred checkerboard has (almost) no energy
    for substrate in ("zero", "blur"):
        assert probability(model.scores(baseline(x[0], substrate)[None]), seed)[0] < 0.05


def test_curve_building_blocks() -> None:
    cam = np.array([[0.1, 0.9], [0.5, 0.9]], np.float32)
    assert saliency_rank(cam).tolist() == [[3, 0], [2, 1]]  # ties in raster order
    inputs = curve_inputs(np.zeros((1, 2, 2)), np.ones((1, 2, 2)), saliency_rank(cam), 3)
    assert inputs.reshape(4, 4).sum(axis=1).tolist() == [0, 2, 3, 4]  # ⌈i·4/3⌉ pixels after step i
    assert trapezoid_auc(np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------- API and options


def test_registry_and_options() -> None:
    assert get_metric("ROAD-combined").name == "road_combined"
    assert resolve_metrics(["deletion", "Deletion", "insertion"]) == ("deletion", "insertion")
    assert resolve_metrics(["all"]) == tuple(m for m in available_metrics() if get_metric(m).in_all)
    assert "pointing_game" not in resolve_metrics(["all"]) and "pointing_game" in resolve_metrics(
        ["all", "pointing_game"]
    )
    with pytest.raises(ValueError, match="unknown metric 'delete'"):
        get_metric("delete")
    assert convert_option("p", "10, 20", (1.0,)) == convert_option("p", [10, 20], (1.0,)) == (10.0, 20.0)
    assert convert_option("p", 50, (1.0,)) == (50.0,)
    assert convert_option("s", "32", 50) == 32
    with pytest.raises(ValueError, match="option s: cannot read 'x' as int"):
        convert_option("s", "x", 50)
    checked = check_options({"curve_steps": "8", "road_percentiles": "10,90", "insertion_baseline": "ZERO", "k": "v"})
    assert checked == {"curve_steps": 8, "road_percentiles": (10.0, 90.0), "insertion_baseline": "zero", "k": "v"}
    for bad, message in (
        ({"curve_steps": "0"}, "option curve_steps must be at least 1, got 0"),
        ({"deletion_baseline": "grey"}, "option deletion_baseline must be one of zero, blur, got 'grey'"),
        ({"road_percentiles": "10,101"}, r"option road_percentiles must be in \[0, 100\], got 101"),
        ({"road_noise": "x"}, "option road_noise: cannot read 'x' as float"),
    ):
        with pytest.raises(ValueError, match=message):
            check_options(bad)


def test_evaluate_maps_checks_its_inputs() -> None:
    x = np.zeros((2, 3, 8, 8), np.float32)
    model = LinearModel(x.shape[1:])
    seed = one_hot_seed(np.array([0, 1]), (3,))
    with pytest.raises(ValueError, match=r"maps of 'm' must be \[N, H, W\]"):
        evaluate_maps(model, x, seed, {"m": np.zeros((2, 4, 4))}, ["deletion"])
    with pytest.raises(ValueError, match="metric_score must be one of"):
        evaluate_maps(model, x, seed, {"m": np.zeros((2, 8, 8))}, ["confidence_change"], {"metric_score": "odds"})
    with pytest.raises(ValueError, match="need a class target"):
        evaluate_maps(model, x, np.zeros((2, 3)), {"m": np.zeros((2, 8, 8))}, ["deletion"])
    with pytest.raises(ValueError, match=r"option road_morf_percentile must be in \[0, 100\], got 120"):
        evaluate_maps(model, x, seed, {"m": np.zeros((2, 8, 8))}, ["road_morf"], {"road_morf_percentile": 120})
    result = evaluate_maps(
        model, x, seed, {"a": np.ones((2, 8, 8)), "b": np.zeros((2, 8, 8))}, ["insertion", "drop_in_confidence"]
    )
    assert [list(r) for r in result] == [["a", "b"]] * 2
    assert list(result[0]["a"]) == ["insertion", "drop_in_confidence"]


# ------------------------------------------------------------------------------------- the real demo model (slow)

ROOT = Path(__file__).resolve().parents[1]


def demo_photos() -> dict:
    """``models/photos.py``'s photos (a script, not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("demo_photos", ROOT / "models" / "photos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PHOTOS


@pytest.mark.slow
def test_gradcam_beats_random_maps_on_the_demo_model(tmp_path: Path) -> None:
    """The five demo photos; random maps: blurred noise at the CAM's scale (σ = 224/7), two draws; mean AUCs."""
    from onnxcam_export.api import export_source

    path = tmp_path / "efficientnet_lite0.onnx"
    export_source(f"{ROOT}/models/efficientnet_lite0.py:build", [], path, exporter="torchscript", log=lambda _: None)
    explainer = Explainer(path, provider="cpu")
    x = preprocess_batch([load() for load in demo_photos().values()], explainer.preprocess)
    explanations = explainer.explain_arrays(x, methods=["gradcam"])
    seed = one_hot_seed(np.array([e.class_index for e in explanations]), explainer.score_shape)
    rng = np.random.default_rng(0)
    maps = {"gradcam": np.stack([e.maps["gradcam"] for e in explanations])}
    maps.update({f"random{i}": smooth_maps(rng, len(x), (224, 224), 224 / 7) for i in range(2)})
    result = evaluate_maps(explainer, x, seed, maps, ["deletion", "insertion"], {"curve_steps": 25})
    mean = {m: {k: np.mean([r[m][k] for r in result]) for k in ("deletion", "insertion")} for m in maps}
    print({m: {k: round(float(v), 4) for k, v in d.items()} for m, d in mean.items()})  # shown with -s
    for i in range(2):
        assert mean["gradcam"]["deletion"] < mean[f"random{i}"]["deletion"]
        assert mean["gradcam"]["insertion"] > mean[f"random{i}"]["insertion"]
