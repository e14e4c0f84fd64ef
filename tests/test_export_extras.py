"""The optional parts of the explainer graph: seeds, dense outputs, input gradients (three ReLU backward rules), heads.

References are independent of the export: ``torch.autograd`` on the PyTorch model, Captum's ``GuidedBackprop`` and
``Deconvolution`` (module hooks), and PyTorch forwards with a hook that replaces a layer's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop
from click.testing import CliRunner
from float64 import run_float64
from gradcheck import relative_error
from onnxcam_export.api import export_model
from onnxcam_export.sources import load_torchvision
from small_models import GapNet, export_gapnet
from torch import nn

from onnxcam import contract
from onnxcam.cli import main
from onnxcam.explainer import Explainer

QUIET = {"log": lambda _: None}


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def torch_grad(model: nn.Module, x: np.ndarray, weights: np.ndarray, wrt: str = "input", layer: str = "") -> np.ndarray:
    """``∂ Σ_n Σ weights_n ⊙ model(x)_n / ∂ (x or the output of module ``layer``)`` by autograd (float32)."""
    xt = torch.tensor(x, requires_grad=True)
    seen: list[torch.Tensor] = []
    hook = None
    if wrt == "layer":
        hook = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: seen.append(out))
    out = model(xt)
    if hook is not None:
        hook.remove()
    y = (out * torch.tensor(weights)).sum()
    return torch.autograd.grad(y, seen[0] if seen else xt)[0].numpy()


# ---------------------------------------------------------------------------------------------------------------- seed
@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explainer, nn.Module]:
    path = export_gapnet(tmp_path_factory.mktemp("gap") / "gap.onnx", input_gradients=("standard",))
    torch.manual_seed(0)
    return Explainer(path, provider="cpu"), GapNet().eval()


def test_seed_replaces_the_one_hot_per_image(gapnet: tuple[Explainer, nn.Module]) -> None:
    explainer, model = gapnet
    x = images(3, 32)
    seed = np.zeros((3, 12), np.float32)
    seed[1] = np.linspace(-1, 1, 12)  # a direction in class space
    seed[2, [3, 7]] = 0.5  # a class set
    out = explainer.run(x, np.array([4, 4, 4]), seed)
    assert out.target_used.tolist() == [4, -1, -1], "seed rows report -1; a zero row falls back to the target"
    weights = seed.copy()
    weights[0, 4] = 1.0
    ref = torch_grad(model, x, weights, "layer", "body.3")
    assert relative_error(out.gradients["body.3"], ref) < 1e-5
    ref_input = torch_grad(model, x, weights)
    assert relative_error(explainer.input_gradient(x, weights), ref_input) < 1e-5


def test_without_seed_the_graph_behaves_as_before(gapnet: tuple[Explainer, nn.Module]) -> None:
    explainer, model = gapnet
    x = images(2, 32, seed=1)
    out = explainer.run(x, np.array([-1, 5]))
    scores = model(torch.tensor(x)).detach().numpy()
    assert out.target_used.tolist() == [int(scores[0].argmax()), 5]
    weights = np.zeros((2, 12), np.float32)
    weights[[0, 1], out.target_used] = 1.0
    assert relative_error(out.gradients["body.3"], torch_grad(model, x, weights, "layer", "body.3")) < 1e-5


def test_explanation_of_a_seed_reports_the_seeded_score(gapnet: tuple[Explainer, nn.Module]) -> None:
    explainer, model = gapnet
    x = images(2, 32, seed=2)
    seed = np.zeros(12, np.float32)
    seed[[1, 2]] = 1.0
    result = explainer.explain_arrays(x, seed=seed, methods=["gradcam"])
    scores = model(torch.tensor(x)).detach().numpy()
    for n, r in enumerate(result):
        assert r.class_index == -1 and r.label is None
        assert r.score == pytest.approx(scores[n, 1] + scores[n, 2], rel=1e-5)


# --------------------------------------------------------------------------------------------------------------- dense
class DenseNet(nn.Module):
    """A miniature segmentation net: conv features, a 1×1 classifier per position, ``[N, 5, 8, 8]`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def test_dense_output_region_seed_matches_autograd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DenseNet().eval()
    path = tmp_path / "dense.onnx"
    _, report = export_model(
        model, path, ["body.3"], (16, 16), exporter="torchscript", input_gradients=("guided",), **QUIET
    )
    assert report is not None and report.worst < 1e-6
    explainer = Explainer(path, provider="cpu")
    assert explainer.score_shape == (5, 8, 8)
    x = images(2, 16, seed=3)
    seed = np.zeros((2, 5, 8, 8), np.float32)
    seed[0, 2, 2:5, 3:7] = 1.0  # class 2 over a region (pytorch-grad-cam's SemanticSegmentationTarget)
    out = explainer.run(x, np.array([-1, 4]), seed)
    scores = model(torch.tensor(x)).detach().numpy()
    top1 = int(scores[1].sum(axis=(1, 2)).argmax())
    assert out.target_used.tolist() == [-1, 4]
    weights = seed.copy()
    weights[1, 4] = 1.0  # a class target on a dense output: that class at every position
    assert relative_error(out.gradients["body.3"], torch_grad(model, x, weights, "layer", "body.3")) < 1e-5
    assert explainer.run(x, np.array([-1, -1])).target_used[1] == top1, "top-1 = largest summed logit"


# ----------------------------------------------------------------------------------------------------- input gradients
@pytest.mark.slow
def test_input_gradients_equal_autograd_and_captum_in_float64() -> None:
    """resnet18 (nn.ReLU modules throughout): the graph in float64 vs float64 autograd, Captum's GuidedBackprop and
    Deconvolution (hooks on nn.ReLU). Float64 on both sides so that no ReLU sits within rounding of its kink."""
    torch.manual_seed(0)
    model = load_torchvision("resnet18").eval()
    graph, _ = export_model(
        model,
        None,
        ["layer4"],
        (64, 64),
        exporter="torchscript",
        optimize=False,
        input_gradients=contract.RELU_RULES,
        **QUIET,
    )
    x = torch.tensor(images(2, 64, seed=4), dtype=torch.float64)
    target = np.array([-1, 7], np.int64)
    ours = run_float64(graph, {contract.INPUT: x.numpy(), contract.TARGET: target})
    model64 = model.double()
    used = ours[contract.TARGET_USED].tolist()
    assert used[0] == int(model64(x[:1]).argmax())
    xg = x.clone().requires_grad_(True)
    standard = torch.autograd.grad(model64(xg)[[0, 1], used].sum(), xg)[0].numpy()
    guided = GuidedBackprop(model64).attribute(x, target=used).detach().numpy()
    deconv = Deconvolution(model64).attribute(x, target=used).detach().numpy()
    for rule, ref in (("standard", standard), ("guided", guided), ("deconvnet", deconv)):
        ours_rule = ours[contract.input_gradient_name(rule)]
        for n in range(2):
            assert relative_error(ours_rule[n], ref[n]) < 1e-8, (rule, n)
    assert relative_error(guided, standard) > 0.1, "the rules differ, so the comparison can tell them apart"


def test_export_cli_can_leave_out_input_gradients_and_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(GapNet().state_dict(), tmp_path / "w.pt")
    tests_dir = str(Path(__file__).parent)
    (tmp_path / "net.py").write_text(
        f"import sys\nsys.path.insert(0, {tests_dir!r})\nfrom small_models import GapNet\n"
    )
    out = tmp_path / "lean.onnx"
    args = ["export", f"{tmp_path / 'net.py'}:GapNet", "-o", str(out), "--layer", "body.3", "--input-size", "32", "32"]
    full = CliRunner().invoke(main, [*args[:3], str(tmp_path / "all.onnx"), *args[4:], "--input-gradient", "all"])
    assert full.exit_code == 0, full.output
    assert Explainer(tmp_path / "all.onnx", provider="cpu").metadata.input_gradients == contract.RELU_RULES
    args += ["--weights", str(tmp_path / "w.pt"), "--input-gradient", "none", "--no-head"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    names = {o.name for o in model.graph.output}
    assert not any(n.startswith(("gradient:input", "head_scores:")) for n in names)
    meta = contract.Metadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.input_gradients == () and meta.heads == ()
    explainer = Explainer(out, provider="cpu")
    with pytest.raises(ValueError, match="--input-gradient guided"):
        explainer.input_gradient(images(1, 32), np.ones(12, np.float32), "guided")
    with pytest.raises(ValueError, match="no head graph"):
        explainer.head_scores("body.3", np.zeros((1, 16, 16, 16), np.float32))


# --------------------------------------------------------------------------------------------------------------- heads
def replaced_forward(model: nn.Module, layer: str, x: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    """PyTorch logits when ``layer``'s output is replaced by ``maps`` (one per row of ``x``)."""
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, _out: maps)
    try:
        with torch.no_grad():
            return model(x).numpy()
    finally:
        handle.remove()


@pytest.mark.slow
def test_head_graph_runs_the_part_after_the_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = load_torchvision("resnet18").eval()
    path = tmp_path / "r18.onnx"
    export_model(model, path, ["layer3", "layer4"], (64, 64), exporter="torchscript", **QUIET)
    explainer = Explainer(path, provider="cpu")
    assert explainer.metadata.heads == ("layer3", "layer4")
    x = images(2, 64, seed=5)
    out = explainer.run(x, np.array([-1, -1]))
    rng = np.random.default_rng(0)
    for layer in ("layer3", "layer4"):
        a = out.activations[layer]
        ablated = np.repeat(a, 3, axis=0)
        ablated[np.arange(6), rng.integers(0, a.shape[1], 6)] = 0.0  # one channel zeroed per copy
        ablated[1, 0] = a.min() - 1e7  # Ablation-CAM's filler for maps that are not ReLU outputs
        ours = explainer.head_scores(layer, ablated)
        ref = replaced_forward(model, layer, torch.tensor(np.repeat(x, 3, axis=0)), torch.tensor(ablated))
        assert relative_error(ours, ref) < 1e-5, layer
        assert relative_error(explainer.head_scores(layer, a), out.scores) < 1e-5


class Bypass(nn.Module):
    """The part after ``block`` also reads the stem's output: no head graph is possible for ``block``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc((self.block(s) + s).mean((2, 3)))


def test_no_head_for_a_layer_skipped_around(tmp_path: Path) -> None:
    torch.manual_seed(0)
    messages: list[str] = []
    graph, _ = export_model(
        Bypass().eval(), None, ["block", "stem"], (16, 16), exporter="torchscript", log=messages.append
    )
    meta = contract.Metadata.from_props({p.key: p.value for p in graph.metadata_props})
    assert meta.heads == ("stem",)
    assert any("no head graph for layer 'block'" in m for m in messages)
    assert contract.head_scores_name("block") not in {o.name for o in graph.graph.output}
