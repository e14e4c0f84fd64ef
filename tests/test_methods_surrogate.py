"""LIME and KernelSHAP on superpixels through :class:`onnxcam.Explainer`, against the ``lime`` package's
``LimeImageExplainer`` and Captum's ``Lime`` / ``KernelShap`` with the same superpixels, coalitions and seed.

Inputs: the seeded GapNet graph (32×32) on two real photos, SLIC superpixels computed here with scikit-image.
Tolerances (``max |Δφ| / max |φ|``): vs ``lime`` 1e-6 (measured ≤ 3.1e-8: same onnxruntime model on both sides, same
coalitions bit for bit from the seed; our attributions are stored in float32); vs Captum 1e-4 (measured ≤ 5.5e-6:
PyTorch vs onnxruntime float32 outputs, and Captum fits its surrogate on float32 copies).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import KernelShap, Lime
from lime.lime_image import LimeImageExplainer
from method_cases import explain, gapnet_case, photos, relative_error
from skimage.segmentation import slic

from onnxcam.methods.request import MethodRequest
from onnxcam.methods.superpixels import segment
from onnxcam.methods.surrogate import END_WEIGHT, kernel_shap, kernel_shap_coalitions

LIME_TOL = 1e-6
CAPTUM_TOL = 1e-4
SAMPLES = 300
TARGETS = [3, 7]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory):
    model, explainer, _ = gapnet_case(tmp_path_factory.mktemp("gapnet"), input_gradients=())
    x = photos((32, 32))
    display = [(i - i.min((1, 2), keepdims=True)) / np.ptp(i, (1, 2), keepdims=True) for i in x]
    segments = np.stack([slic(d.transpose(1, 2, 0), n_segments=12, compactness=10, start_label=0) for d in display])
    return model, explainer, x, segments


def probabilities(explainer, images_hwc: np.ndarray) -> np.ndarray:
    scores = explainer.scores(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2), np.float32)).astype(np.float64)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def lime_package(explainer, image: np.ndarray, segments: np.ndarray, target: int, seed: int, **kw) -> np.ndarray:
    """φ painted on the superpixels by ``lime``'s ``LimeImageExplainer`` (baseline 0, no top labels)."""
    reference = LimeImageExplainer(kernel_width=0.25, random_state=seed, **kw.pop("selection", {}))
    found = reference.explain_instance(
        image.transpose(1, 2, 0).astype(np.float64),
        lambda batch: probabilities(explainer, batch),
        labels=(target,),
        hide_color=0,
        top_labels=None,
        num_samples=SAMPLES,
        batch_size=10,
        segmentation_fn=lambda _: segments,
        random_seed=0,  # else explain_instance draws one number from the sampler's stream first
        **kw,
    )
    phi = np.zeros(segments.max() + 1)
    for feature, weight in found.local_exp[target]:
        phi[feature] = weight
    return phi[segments]


@pytest.mark.parametrize("num_features", [0, 5])
def test_lime_matches_the_lime_package(case, num_features: int) -> None:
    _, explainer, x, segments = case
    ours = explain(
        explainer,
        x,
        TARGETS,
        "lime",
        num_samples=SAMPLES,
        superpixels=segments,
        random_seed=11,
        num_features=num_features,
    )[1]
    for n, target in enumerate(TARGETS):
        extra = (
            {"num_features": num_features, "selection": {"feature_selection": "highest_weights"}}
            if num_features
            else {}
        )
        reference = lime_package(explainer, x[n], segments[n], target, 11, **extra)
        assert relative_error(ours[n, 0], reference) <= LIME_TOL
        if num_features:
            assert len(np.unique(reference)) == num_features + 1  # K superpixels kept, the others 0


def captum_forward(model):
    return lambda t: torch.softmax(model(t), dim=1)


def test_lime_matches_captum_lime_on_the_same_coalitions(case) -> None:
    model, explainer, x, segments = case
    ours = explain(explainer, x, TARGETS, "lime", num_samples=SAMPLES, superpixels=segments, random_seed=5)[1]
    for n, target in enumerate(TARGETS):
        features = segments[n].max() + 1
        z = np.random.RandomState(5).randint(0, 2, SAMPLES * features).reshape(SAMPLES, features)
        z[0] = 1  # the lime package's sampler, written out here

        def coalitions(_inputs, z=z, **_kw):
            yield from (torch.from_numpy(row[None]).long() for row in z)

        def cosine_kernel(_orig, _pert, interpretable, features=features, **_kw):
            d = 1 - interpretable.double().sum().item() ** 0.5 / features**0.5
            return float(np.sqrt(np.exp(-(d**2) / 0.25**2)))

        reference = Lime(
            captum_forward(model), SkLearnRidge(alpha=1.0), similarity_func=cosine_kernel, perturb_func=coalitions
        ).attribute(
            torch.from_numpy(x[n : n + 1]),
            baselines=0.0,
            target=target,
            feature_mask=torch.from_numpy(segments[n][None, None]),
            n_samples=SAMPLES,
            perturbations_per_eval=32,
        )
        assert relative_error(ours[n, 0], reference[0, 0].numpy()) <= CAPTUM_TOL


def test_kernel_shap_matches_captum_on_the_same_coalitions(case) -> None:
    model, explainer, x, segments = case
    ours = explain(explainer, x, TARGETS, "kernelshap", num_samples=SAMPLES, superpixels=segments, random_seed=2)[1]
    for n, target in enumerate(TARGETS):
        z = kernel_shap_coalitions(SAMPLES, segments[n].max() + 1, 2)

        def coalitions(_inputs, z=z, **_kw):
            yield from (torch.from_numpy(row[None]).long() for row in z)

        reference = KernelShap(captum_forward(model))
        reference.perturb_func = coalitions  # Captum's own sampler draws from torch's RNG
        attributions = reference.attribute(
            torch.from_numpy(x[n : n + 1]),
            baselines=0.0,
            target=target,
            feature_mask=torch.from_numpy(segments[n][None, None]),
            n_samples=SAMPLES,
            perturbations_per_eval=32,
        )
        assert relative_error(ours[n, 0], attributions[0, 0].numpy()) <= CAPTUM_TOL


def test_kernel_shap_coalitions_follow_the_shapley_kernel() -> None:
    features, count = 10, 20000
    z = kernel_shap_coalitions(count, features, 0)
    assert z[0].all() and not z[1].any()
    sizes = z[2:].sum(axis=1).astype(int)
    k = np.arange(1, features)
    expected = (features - 1) / (k * (features - k))
    expected = expected / expected.sum()
    observed = np.bincount(sizes, minlength=features)[1:] / len(sizes)
    np.testing.assert_allclose(observed, expected, atol=0.01)  # ~4 standard errors at 20000 draws
    within = z[2:][sizes == 3]  # given the size, every superpixel equally likely
    np.testing.assert_allclose(within.mean(axis=0), 0.3, atol=0.03)


class LinearInPixels:
    """A :class:`ModelAccess` whose logit 0 is ``Σ w ⊙ x``: linear in the shown superpixels (baseline 0)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def scores(self, x: np.ndarray) -> np.ndarray:
        logit = (x * self.weights).reshape(len(x), -1).sum(axis=1)
        return np.stack([logit, np.zeros_like(logit)], axis=1).astype(np.float64)


def test_kernel_shap_is_exact_for_a_model_linear_in_the_superpixels() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 12, 12))
    model = LinearInPixels(rng.standard_normal((2, 12, 12)))
    segments = np.repeat(np.repeat(np.arange(9).reshape(3, 3), 4, axis=0), 4, axis=1)
    shapley = np.array([(x[0] * model.weights)[:, segments == f].sum() for f in range(9)])  # φ_f of a linear game
    seed = np.array([[1.0, 0.0]])
    options = {"num_samples": 60, "superpixels": segments, "score": "logit", "batch_size": 7}
    attributions, details = kernel_shap(MethodRequest(model, x, seed, model.scores(x), options=options))
    np.testing.assert_allclose(attributions[0, 0], shapley[segments], rtol=1e-8, atol=1e-8)
    assert details["r2"][0] == pytest.approx(1.0) and details["intercept"][0] == pytest.approx(0.0, abs=1e-8)
    assert END_WEIGHT > 1e3


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_superpixel_methods_are_reproducible_with_a_seed(case, method: str) -> None:
    _, explainer, x, _ = case
    first = explain(explainer, x, TARGETS, method, num_samples=40, n_segments=8, random_seed=4)
    again = explain(explainer, x, TARGETS, method, num_samples=40, n_segments=8, random_seed=4, batch_size=9)[1]
    other = explain(explainer, x, TARGETS, method, num_samples=40, n_segments=8, random_seed=5)[1]
    np.testing.assert_array_equal(first[1], again)
    assert not np.array_equal(first[1], other)
    assert all(2 <= r.details[method]["superpixels"] <= 20 for r in first[2])


def test_quickshift_and_slic_give_superpixels_of_a_photo() -> None:
    for image in photos((224, 224)):
        for algorithm, low, high in (("quickshift", 10, 200), ("slic", 25, 75)):
            labels = segment(image, algorithm, 50, 10.0, "LIME")
            assert labels.shape == (224, 224) and low <= labels.max() + 1 <= high
            np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_missing_extra_is_refused_in_one_line(monkeypatch, case) -> None:
    _, explainer, x, _ = case
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # what an install without the extra sees
    with pytest.raises(ValueError, match=r"^LIME and KernelSHAP needs scikit-image: pip install 'onnxcam\[lime\]'$"):
        explain(explainer, x, TARGETS, "lime", num_samples=10)
