"""Input-gradient methods through :class:`onnxcam.Explainer` on exported graphs, against PyTorch references on the
same module, inputs and targets: ``captum.attr`` (Saliency, Deconvolution, NoiseTunnel, IntegratedGradients) and
pytorch-grad-cam 1.5.x (``GuidedBackpropReLUModel``; guided Grad-CAM as its recipe ``GradCAM map ⊙ guided backprop``).

The references run in float64. Tolerance: 1e-4 relative to the reference's peak (guided/deconvnet also flip
``[ḡ > 0]`` where ``ḡ`` is rounding noise, which moves only values of that size).

SmoothGrad and Integrated Gradients average the gradient over many inputs (noisy copies, path points). The input
gradient of a ReLU network is piecewise constant, and float32 rounding flips the ReLU mask of a unit whose input is
within ~1e-7 of 0 — somewhere among dozens of points, in PyTorch float32 as in onnxruntime (resnet18, 50 IG path
points: PyTorch float32 is off float64 by up to 1e-2 of the peak at 3 points, our graph at 2 other points; every
other point agrees to 1e-6). A flip in a deep unit moves a whole receptive field, so against PyTorch those two
methods are held to ``max error ≤ 1e-2`` of the peak and ``‖error‖₂ ≤ 1e-3 ‖reference‖₂``; and their algorithm is
checked exactly (1e-5) by running captum itself on our graph (:class:`GraphFunction`: forward ``Explainer.scores``,
backward ``Explainer.input_gradient``), where both evaluate the model at bit-identical points.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import Deconvolution, IntegratedGradients, NoiseTunnel, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters
from method_cases import explain, gapnet_case, relative_error, resnet18_case
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from onnxcam.contract import RELU_RULES
from onnxcam.methods.input_gradients import quadrature, smoothgrad_noise
from onnxcam.methods.request import MethodRequest
from onnxcam.postprocess import normalize

TOL = 1e-4
KINK_TOL = 1e-2
L2_TOL = 1e-3


def assert_close_up_to_relu_flips(ours: np.ndarray, ref: np.ndarray) -> None:
    """Every element within ``KINK_TOL`` of the reference's peak, and the whole within ``L2_TOL`` (relative L2)."""
    peak_error = float(np.abs(ours - ref).max() / np.abs(ref).max())
    l2_error = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    assert peak_error <= KINK_TOL and l2_error <= L2_TOL, (peak_error, l2_error)


class GraphFunction(torch.autograd.Function):
    """The explainer graph as a PyTorch function: forward = ``scores``, backward = ``input_gradient`` (standard)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, explainer) -> torch.Tensor:
        ctx.explainer = explainer
        ctx.save_for_backward(x)
        return torch.from_numpy(explainer.scores(x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(ctx.explainer.input_gradient(x.detach().numpy(), grad.numpy(), "standard")), None


CASES = ["gapnet", pytest.param("resnet", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory):
    model, explainer, x = gapnet_case(tmp_path_factory.mktemp("gapnet"), heads=False, input_gradients=RELU_RULES)
    return model, explainer, x, ["body.3"], [3, 5]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory):
    model, explainer, x = resnet18_case(
        tmp_path_factory.mktemp("resnet18"), ("layer4",), heads=False, input_gradients=RELU_RULES
    )
    return model, explainer, x, ["layer4"], [281, 967]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest):
    """``(float64 copy of the model, explainer, x, layers, targets)``."""
    model, *rest = request.getfixturevalue(request.param)
    return copy.deepcopy(model).double(), *rest


def f64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).double()


def guided_backprop_reference(model: torch.nn.Module, x: np.ndarray, targets: list[int]) -> np.ndarray:
    """pytorch-grad-cam's guided backpropagation, one image at a time (it takes one), as ``[N, C, H, W]``."""
    guided = GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")
    return np.stack([guided(f64(x[n : n + 1]), t).transpose(2, 0, 1) for n, t in enumerate(targets)])


def test_saliency_matches_captum(case) -> None:
    model, explainer, x, _, targets = case
    ref = Saliency(model).attribute(f64(x), target=targets).numpy()  # abs=True
    maps, ours, _ = explain(explainer, x, targets, "saliency")
    assert relative_error(ours, ref) <= TOL
    np.testing.assert_allclose(maps, normalize(np.abs(ref).max(axis=1)), atol=TOL)


def test_guided_backprop_matches_pytorch_grad_cam(case) -> None:
    model, explainer, x, _, targets = case
    ref = guided_backprop_reference(model, x, targets)
    _, ours, _ = explain(explainer, x, targets, "guidedbackprop")
    assert relative_error(ours, ref) <= TOL


def test_deconvnet_matches_captum(case) -> None:
    model, explainer, x, _, targets = case
    ref = Deconvolution(model).attribute(f64(x), target=targets).numpy()
    _, ours, _ = explain(explainer, x, targets, "deconvnet")
    assert relative_error(ours, ref) <= TOL


def test_guided_gradcam_is_gradcam_times_guided_backprop(case) -> None:
    model, explainer, x, layers, targets = case
    modules = dict(copy.deepcopy(model).named_modules())
    with GradCAM(model=modules[""], target_layers=[modules[n] for n in layers]) as cam:
        cam_maps = cam(input_tensor=f64(x), targets=[ClassifierOutputTarget(t) for t in targets])
    ref = cam_maps[:, None] * guided_backprop_reference(model, x, targets)
    _, ours, _ = explain(explainer, x, targets, "guidedgradcam")
    assert relative_error(ours, ref) <= TOL


def test_smoothgrad_matches_captum_noise_tunnel_with_its_noise(case) -> None:
    model, explainer, x, _, targets = case
    samples, stdev = 6, 0.3
    torch.manual_seed(11)
    ref = NoiseTunnel(Saliency(model)).attribute(
        f64(x), nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=targets, abs=False
    )
    torch.manual_seed(11)  # captum draws torch.normal(0, σ) for all [N·n, C, H, W] rows, image-major
    noise = torch.normal(0, torch.tensor(stdev).repeat((len(x) * samples, *x.shape[1:]))).numpy()
    _, ours, _ = explain(explainer, x, targets, "smoothgrad", noise=noise.reshape(len(x), samples, *x.shape[1:]))
    assert_close_up_to_relu_flips(ours, ref.numpy())


@pytest.mark.parametrize(
    ("method", "steps", "baseline"),
    [("riemann_right", 12, 0.0), ("gausslegendre", 9, "noise"), ("riemann_trapezoid", 5, -0.25)],
)
def test_integrated_gradients_match_captum(case, method: str, steps: int, baseline) -> None:
    model, explainer, x, _, targets = case
    if isinstance(baseline, str):
        baseline = np.random.default_rng(4).normal(0, 0.5, x.shape).astype(np.float32)
    ig = IntegratedGradients(model)
    ref, delta = ig.attribute(
        f64(x),
        baselines=f64(baseline) if isinstance(baseline, np.ndarray) else baseline,
        target=targets,
        n_steps=steps,
        method=method,
        return_convergence_delta=True,
    )
    _, ours, results = explain(
        explainer, x, targets, "integratedgradients", steps=steps, method=method, baseline=baseline
    )
    assert_close_up_to_relu_flips(ours, ref.numpy())
    gaps = np.array([r.details["integratedgradients"]["completeness_gap"] for r in results])
    # captum's convergence delta is the same quantity: Σ attributions − (f(x) − f(x'))
    scale = np.abs(ref.numpy()).sum(axis=(1, 2, 3))
    assert np.abs(gaps - delta.numpy()).max() <= 1e-4 * scale.max()


def test_captum_on_our_graph_computes_our_smoothgrad_and_integrated_gradients(case) -> None:
    _, explainer, x, _, targets = case

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return GraphFunction.apply(inputs, explainer)

    xt = torch.from_numpy(x)
    torch.manual_seed(5)
    ref = NoiseTunnel(Saliency(forward)).attribute(
        xt, nt_type="smoothgrad", nt_samples=5, stdevs=0.5, target=targets, abs=False
    )
    torch.manual_seed(5)
    noise = torch.normal(0, torch.tensor(0.5).repeat((len(x) * 5, *x.shape[1:]))).numpy()
    _, ours, _ = explain(explainer, x, targets, "smoothgrad", noise=noise.reshape(len(x), 5, *x.shape[1:]))
    assert relative_error(ours, ref.numpy()) <= 1e-5
    baseline = np.random.default_rng(2).normal(0, 0.5, x.shape).astype(np.float32)
    ref = IntegratedGradients(forward).attribute(
        xt, baselines=torch.from_numpy(baseline), target=targets, n_steps=11, method="gausslegendre"
    )
    _, ours, _ = explain(
        explainer, x, targets, "integratedgradients", steps=11, method="gausslegendre", baseline=baseline, batch_size=4
    )
    assert relative_error(ours, ref.numpy()) <= 1e-5


@pytest.mark.slow
def test_integrated_gradients_completeness_on_resnet18(resnet) -> None:
    """``completeness_gap = Σ attributions − (y(x) − y(x'))`` is small and shrinks with more steps.

    Measured (resnet18 with random batch norm, chelsea/coffee, ``|y(x) − y(0)|`` ≈ 0.45/0.42): Gauss–Legendre 64
    steps 0.3 %/0.04 % of it; riemann_right 16 steps 0.7 %/15 %, 64 steps 0.2 %/3 %.
    """
    _, explainer, x, _, targets = resnet
    rows = np.arange(len(x))
    change = explainer.scores(x)[rows, targets] - explainer.scores(np.zeros_like(x))[rows, targets]

    def gaps(steps: int, method: str) -> np.ndarray:
        _, attributions, results = explain(explainer, x, targets, "integratedgradients", steps=steps, method=method)
        found = np.array([r.details["integratedgradients"]["completeness_gap"] for r in results])
        np.testing.assert_allclose(found, attributions.sum(axis=(1, 2, 3)) - change, atol=1e-5 * np.abs(change).max())
        return np.abs(found)

    assert (gaps(64, "gausslegendre") <= 0.01 * np.abs(change)).all()
    coarse, fine = gaps(16, "riemann_right"), gaps(64, "riemann_right")
    assert fine.max() < coarse.max() and (fine <= 0.05 * np.abs(change)).all(), (coarse, fine, change)


@pytest.mark.parametrize(
    "method", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
def test_quadrature_is_captums(method: str) -> None:
    sizes, alphas = approximation_parameters(method)
    a, w = quadrature(method, 7)
    np.testing.assert_allclose(a, alphas(7), atol=1e-7)  # captum's Riemann alphas pass through float32 linspace
    np.testing.assert_allclose(w, sizes(7), rtol=1e-12)


def test_quadrature_gauss_legendre_is_exact_to_degree_2m_minus_1() -> None:
    a, w = quadrature("gausslegendre", 4)
    assert np.dot(w, a**7) == pytest.approx(1 / 8, rel=1e-12)
    with pytest.raises(ValueError, match="'steps' must be >= 2"):
        quadrature("riemann_left", 1)


def test_smoothgrad_noise_scale_and_reproducibility() -> None:
    x = np.random.default_rng(0).normal(0, 2, (2, 3, 16, 16)).astype(np.float32)
    request = MethodRequest(None, x, np.zeros((2, 1)), np.zeros((2, 1)), options={"n": 40, "sigma": 0.1})
    noise = smoothgrad_noise(request)
    assert noise.shape == (2, 40, 3, 16, 16)
    np.testing.assert_array_equal(noise, smoothgrad_noise(request))
    for n in range(2):
        expected = 0.1 * (x[n].max() - x[n].min())
        assert noise[n].std() == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="option 'noise' must be"):
        smoothgrad_noise(MethodRequest(None, x, np.zeros((2, 1)), np.zeros((2, 1)), options={"noise": noise[0]}))


def test_bad_options_name_the_option(gapnet) -> None:
    _, explainer, x, _, targets = gapnet
    with pytest.raises(ValueError, match="option 'steps' must be an integer >= 1, got 0"):
        explain(explainer, x, targets, "integratedgradients", steps=0)
    with pytest.raises(ValueError, match="option 'baseline' must be a number or an array broadcastable"):
        explain(explainer, x, targets, "integratedgradients", baseline=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="option 'method' must be one of"):
        explain(explainer, x, targets, "integratedgradients", method="simpson")
    with pytest.raises(ValueError, match="option 'sigma' must be a number in"):
        explain(explainer, x, targets, "smoothgrad", sigma="wide")
