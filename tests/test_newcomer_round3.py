"""Rough edges found by trying onnxcam as a newcomer would (round 3): each test is a model or a run a user brings.

- A Hugging Face classifier exported as is (``forward`` returns ``ImageClassifierOutput``): the default layer must be
  one whose patch tokens reach the logits, not the final LayerNorm (whose patch tokens the head never reads: every
  gradient CAM there is blank). Maps vs pytorch-grad-cam with its ViT ``reshape_transform``, 1e-4.
- LIME on an image SLIC cuts into one superpixel: refused like KernelSHAP, not a blank map.
- A named layer the scores do not reach (a ViT's final norm): export warns; `onnxcam explain` flags the blank map.
- A batch size baked in by tracing (``len(x)``): refused in one line, not an onnxruntime traceback.
- ``aug_smooth`` with metrics and a metric option (``curve_steps``): the option must reach the metrics, not make every
  image fail.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model
from small_models import HFLogits, export_gapnet
from torch import nn

from onnxcam.cli import main
from onnxcam.explainer import Explainer


@pytest.mark.slow  # ~20 s on 2 shared cores (transformers import + export)
def test_hf_vit_output_object_gets_a_layer_its_logits_reach(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(config).eval()
    messages: list[str] = []
    path = tmp_path / "hf.onnx"
    export_model(model, path, None, (32, 32), exporter="torchscript", log=messages.append)
    explainer = Explainer(path, provider="cpu")
    assert list(explainer.layers) == ["vit.layers.1.layernorm_before"], messages

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [1, 3])])
    with GradCAM(HFLogits(model), [model.vit.layers[1].layernorm_before], reshape_transform=reshape) as cam:
        reference = cam(torch.from_numpy(x), [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert ours.max(axis=(1, 2)).min() > 0.99  # not blank
    np.testing.assert_allclose(ours, reference, atol=1e-4)


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory) -> Explainer:
    return Explainer(export_gapnet(tmp_path_factory.mktemp("gap") / "gap.onnx"), provider="cpu")


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_surrogates_refuse_an_image_of_one_superpixel(gapnet: Explainer, method: str) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)  # SLIC: one segment
    with pytest.raises(ValueError, match=r"at least 2 superpixels.*n_segments"):
        gapnet.explain([noise], methods=[method], options={"num_samples": 20})


def test_aug_smooth_passes_metric_options_to_the_metrics(gapnet: Explainer) -> None:
    from onnxcam.methods.options import check_options
    from onnxcam.metrics import evaluate_maps

    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    options = {"curve_steps": 4, "masks": 50}
    [*results] = gapnet.explain_arrays(
        x, None, ["gradcam", "rise"], metrics=["deletion"], options=options, aug_smooth=True
    )
    plain = gapnet.explain_arrays(x, None, ["gradcam", "rise"], options={"masks": 50}, aug_smooth=True)
    seeds = np.stack([r.seed for r in results])
    for method in ("gradcam", "rise"):
        maps = np.stack([r.maps[method] for r in results])
        np.testing.assert_array_equal(maps, np.stack([r.maps[method] for r in plain]))
        checked = check_options([method], ["deletion"], {"curve_steps": 4}, (32, 32))
        [*expected] = evaluate_maps(gapnet, x, seeds, {method: maps}, ["deletion"], checked, gapnet.scores_kind)
        assert [r.metrics[method]["deletion"] for r in results] == [e[method]["deletion"] for e in expected]
        [*default] = evaluate_maps(gapnet, x, seeds, {method: maps}, ["deletion"], {}, gapnet.scores_kind)
        assert [r.metrics[method]["deletion"] for r in results] != [e[method]["deletion"] for e in default]


class TinyViT(nn.Module):
    """Patch embedding, a class token, one token-mixing block, a final LayerNorm; the head reads the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.norm1 = nn.LayerNorm(8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        u = self.norm1(t)
        t = t + self.mix(u).mean(1, keepdim=True)  # every token reads every token
        return self.head(self.norm(t)[:, 0])


def test_export_warns_when_the_scores_do_not_reach_a_layer(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyViT().eval()
    for layers, warned in ((["norm"], ["norm"]), (["norm1"], [])):
        messages: list[str] = []
        export_model(model, tmp_path / "v.onnx", layers, (16, 16), exporter="torchscript", log=messages.append)
        warnings = [m for m in messages if m.startswith("warning:")]
        assert [w.split("'")[1] for w in warnings] == warned, messages
        explained = Explainer(tmp_path / "v.onnx", provider="cpu").explain_arrays(
            np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
        )
        assert (explained[0].maps["gradcam"].max() == 0) == bool(warned)  # the warning is about a blank map
        # ... and `onnxcam explain` says so in the image's line and on stderr (status stays ok: the map is exact)
        picture = tmp_path / "p.png"
        cv2.imwrite(str(picture), (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8))
        result = CliRunner().invoke(
            main, ["explain", str(tmp_path / "v.onnx"), str(picture), "-o", str(tmp_path / "o")]
        )
        line = json.loads((tmp_path / "o" / "results.jsonl").read_text())
        assert result.exit_code == 0 and line["status"] == "ok", result.output
        blank = [w for w in line["warnings"] if w.startswith("gradcam: the map is 0 everywhere")]
        assert len(blank) == len(warned) and ("gradcam: the map is 0 everywhere" in result.stderr) == bool(warned)


class BakedBatch(TinyViT):
    """The class token expanded to ``len(t)``: tracing turns the example's batch size into a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(t)[:, 0])


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_batch_size_baked_by_tracing_is_refused_in_one_line(tmp_path, exporter: str) -> None:
    from onnxcam_export.torch_capture import TracingError

    torch.manual_seed(0)
    with pytest.raises(TracingError) as refused:
        export_model(BakedBatch().eval(), tmp_path / "b.onnx", ["patch"], (16, 16), exporter=exporter, log=print)
    message = str(refused.value)
    assert "\n" not in message and "runs only at the example's batch of 2" in message, message
    assert message.endswith("use x.shape[0] (or -1 in reshape/expand) in forward")
    assert not (tmp_path / "b.onnx").exists()


class AttentionViT(TinyViT):
    """:class:`TinyViT` mixing tokens with ``nn.MultiheadAttention`` (TorchScript leaves shapes inside it unknown)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        u = self.norm1(t)
        t = t + self.attention(u, u, u, need_weights=False)[0]
        return self.head(self.norm(t)[:, 0])


def test_torchscript_attention_exports_exactly(tmp_path) -> None:
    """TorchScript's ``nn.MultiheadAttention`` computes its q/k/v split with constant arithmetic that ONNX shape
    inference does not evaluate; the shapes are folded (:mod:`onnxcam_export.autodiff.shape_folding`) and the export
    verifies against float64 autograd."""
    torch.manual_seed(0)
    _, report = export_model(
        AttentionViT().eval(), tmp_path / "a.onnx", ["norm1"], (16, 16), exporter="torchscript", log=lambda _: None
    )
    assert report is not None and report.typical <= 1e-4


def test_a_shape_left_unknown_names_the_other_exporter(tmp_path, monkeypatch) -> None:
    """Without the folding (a shape nothing can infer), the refusal is one line naming the way out."""
    from onnxcam_export.autodiff import graph_info
    from onnxcam_export.autodiff.context import GradientError

    monkeypatch.setattr(graph_info, "fold", lambda model, constants: {})
    torch.manual_seed(0)
    with pytest.raises(GradientError) as refused:
        export_model(AttentionViT().eval(), tmp_path / "a.onnx", ["norm1"], (16, 16), exporter="torchscript", log=print)
    message = str(refused.value)
    assert "\n" not in message and "is unknown" in message and message.endswith("try --exporter dynamo"), message
    assert not (tmp_path / "a.onnx").exists()
