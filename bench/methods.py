"""Cost of the perturbation and input-gradient methods next to their peers (pytorch-grad-cam, Captum).

One seeded image, random-init ResNet-50 at 224² (layer4 for the layer methods), CPU, the same threads everywhere;
milliseconds per image (median of a few runs; Score-CAM and RISE run once: each is thousands of forward passes).
Peers run the same method with the same parameters: pytorch-grad-cam's ``ScoreCAM``/``AblationCAM``/``GradCAM``
(batch size 64 for their perturbed copies, as onnxcam's chunks) and ``GuidedBackpropReLUModel``; Captum's
``Saliency``, ``Occlusion``, ``IntegratedGradients``, ``NoiseTunnel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import Table, fmt, median_seconds, ratio
from workers import inputs

ARCH, LAYER = "resnet50", "layer4"
OCCLUSION = {"patch": 32, "stride": 16}
SMOOTHGRAD = {"n": 16, "sigma": 0.15}
IG_STEPS = 32
RISE_MASKS = 1000


@dataclass(frozen=True)
class Case:
    """One method: onnxcam's name and options, how many runs to time, and the peer that computes the same thing."""

    method: str
    options: dict[str, Any]
    runs: int
    peer: str
    make_peer: Callable[[Any, Any, int], Callable[[], object]] | None


def _pgc_cam(cls_name: str) -> Callable[[Any, Any, int], Callable[[], object]]:
    def make(model: Any, x: Any, target: int) -> Callable[[], object]:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[model.get_submodule(LAYER)])
        cam.batch_size = 64
        return lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])

    return make


def _guided(model: Any, x: Any, target: int) -> Callable[[], object]:
    from pytorch_grad_cam import GuidedBackpropReLUModel

    guided = GuidedBackpropReLUModel(model, device="cpu")
    return lambda: guided(x, target_category=target)


def _captum(kind: str) -> Callable[[Any, Any, int], Callable[[], object]]:
    def make(model: Any, x: Any, target: int) -> Callable[[], object]:
        from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

        if kind == "saliency":
            return lambda: Saliency(model).attribute(x, target=target, abs=True)
        if kind == "occlusion":
            size, step = OCCLUSION["patch"], OCCLUSION["stride"]
            return lambda: Occlusion(model).attribute(
                x, target=target, sliding_window_shapes=(3, size, size), strides=(3, step, step),
                perturbations_per_eval=64,
            )  # fmt: skip
        if kind == "ig":
            return lambda: IntegratedGradients(model).attribute(
                x, target=target, n_steps=IG_STEPS, method="riemann_right", internal_batch_size=64
            )
        stdev = SMOOTHGRAD["sigma"] * float(x.max() - x.min())
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            x, target=target, nt_type="smoothgrad", nt_samples=SMOOTHGRAD["n"], stdevs=stdev, abs=False,
            nt_samples_batch_size=64,
        )  # fmt: skip

    return make


CASES = (
    Case("gradcam", {}, 5, "pytorch-grad-cam GradCAM", _pgc_cam("GradCAM")),
    Case("scorecam", {"batch_size": 64}, 1, "pytorch-grad-cam ScoreCAM", _pgc_cam("ScoreCAM")),
    Case("ablationcam", {"batch_size": 64}, 3, "pytorch-grad-cam AblationCAM", _pgc_cam("AblationCAM")),
    Case("occlusion", OCCLUSION, 3, "Captum Occlusion", _captum("occlusion")),
    Case("rise", {"masks": RISE_MASKS}, 1, "—", None),
    Case("saliency", {}, 5, "Captum Saliency", _captum("saliency")),
    Case("guidedbackprop", {}, 5, "pytorch-grad-cam GuidedBackpropReLUModel", _guided),
    Case("smoothgrad", SMOOTHGRAD, 3, "Captum NoiseTunnel(Saliency)", _captum("smoothgrad")),
    Case("integratedgradients", {"steps": IG_STEPS}, 3, "Captum IntegratedGradients", _captum("ig")),
)


def methods_table(model: Any, explainer_path: str, threads: int, log: Callable[[str], None]) -> Table:
    """Milliseconds per image of each method in onnxcam and in its peer, and the speed-up."""
    import torch

    from onnxcam.explainer import Explainer

    table = Table(
        f"Perturbation and input-gradient methods ({ARCH}, one image, CPU)",
        ["method", "options", "onnxcam ms", "peer", "peer ms", "speed-up", "onnxcam images/s"],
        note=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    explainer = Explainer(explainer_path, provider="cpu", threads=threads)
    x = inputs(1)
    target = int(explainer.scores(x)[0].argmax())
    xt = torch.from_numpy(x)
    for case in CASES:
        log(f"  {case.method} …")

        def ours(case: Case = case) -> object:
            return explainer.explain_arrays(x, target, [case.method], [LAYER], options=case.options)

        mine = 1000 * median_seconds(ours, 0 if case.runs == 1 else 1, case.runs)
        theirs = None
        if case.make_peer is not None:
            run = case.make_peer(model, xt, target)
            theirs = 1000 * median_seconds(run, 0 if case.runs == 1 else 1, case.runs)
        options = ", ".join(f"{k}={v}" for k, v in case.options.items()) or "—"
        speedup = fmt(ratio(theirs, mine), 1, "×")
        table.add(case.method, options, fmt(mine, 0), case.peer, fmt(theirs, 0), speedup, fmt(1000 / mine, 2))
    return table
