"""ONNX sources with a fixed batch that their graph folds into other shapes (Swin's windows, attention reshapes, a
flatten ``[-1]`` then ``[1, K]``) keep that batch: the explainer graph is built and verified at it, the metadata says
so (``onnxcam.fixed_batch``) and the runtime feeds chunks of exactly that many images. A rewrite to a dynamic batch
is kept only when a batch of distinct images gives the scores of each image run alone (no silent mixing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.api import export_onnx_file
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from onnxcam import contract
from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.model_file import describe

SIZE = 16


class FoldedAttention(nn.Module):
    """Conv body, attention over positions computed with the batch folded away (``[1, C, h, w] → [C, h·w]``, as a
    fixed-batch export of Swin writes its windows), back to ``[1, C, h, w]``, residual, ReLU, GAP, linear head. Runs
    at batch 1 only, in PyTorch too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        c, h, w = f.shape[1:]
        t = f.reshape(c, h * w)
        attention = torch.softmax(t.T @ t / c**0.5, dim=-1)
        mixed = (t @ attention).reshape(1, c, h, w)
        return self.fc(self.act(mixed + f).mean((2, 3)))


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, list[str]]:
    """The model, its explainer graph (exported from its dynamo ONNX file, batch 1) and the export log."""
    torch.manual_seed(0)
    model = FoldedAttention().eval()
    folder = tmp_path_factory.mktemp("folded")
    source = folder / "folded.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(source), dynamo=True, opset_version=18)
    logs: list[str] = []
    out = folder / "explainer.onnx"
    export_onnx_file(source, out, None, (SIZE, SIZE), mean=(0.0,), std=(1.0,), log=logs.append)
    return model, out, logs


def images(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def test_folded_batch_is_kept_said_and_recorded(folded) -> None:
    _, path, logs = folded
    kept = [line for line in logs if "fixed batch of 1" in line]
    assert len(kept) == 1 and "one image per run" in kept[0] and "cannot run on a batch of 2" in kept[0], logs
    assert any(line.startswith("verified against float64 finite differences") for line in logs), logs
    explainer = Explainer(path, provider="cpu")
    assert explainer.metadata.fixed_batch == 1
    assert "batch: fixed at 1" in describe(path)


def test_gradients_match_autograd_one_image_at_a_time(folded) -> None:
    """Three images through a batch-1 graph: activation and gradient of the top-1 logit vs torch autograd of each
    image alone (relative ≤ 1e-4)."""
    model, path, _ = folded
    explainer = Explainer(path, provider="cpu")
    (layer,) = explainer.layers
    x = images(3)
    out = explainer.run(x, np.full(3, contract.TOP1, np.int64))
    assert out.scores.shape == (3, 5) and out.gradients[layer].shape[0] == 3
    captured: dict[str, torch.Tensor] = {}
    hook = model.act.register_forward_hook(lambda _m, _i, o: captured.update(a=o))
    for n in range(3):
        scores = model(torch.from_numpy(x[n : n + 1]))
        (grad,) = torch.autograd.grad(scores[0, scores[0].argmax()], captured["a"])
        act, ref = captured["a"].detach().numpy(), grad.numpy()
        assert np.abs(out.activations[layer][n] - act[0]).max() <= 1e-5 * np.abs(act).max()
        assert np.abs(out.gradients[layer][n] - ref[0]).max() <= 1e-4 * np.abs(ref).max()
        assert np.abs(out.scores[n] - scores.detach().numpy()[0]).max() <= 1e-5 * np.abs(out.scores[n]).max()
    hook.remove()


def test_gradcam_matches_pytorch_grad_cam(folded) -> None:
    model, path, _ = folded
    explainer = Explainer(path, provider="cpu")
    x = images(3)
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, None, ["gradcam"])])
    with GradCAM(model=model, target_layers=[model.act]) as cam:
        ref = np.concatenate(
            [
                cam(input_tensor=torch.from_numpy(x[n : n + 1]), targets=[ClassifierOutputTarget(int(c))])
                for n, c in enumerate(explainer.scores(x).argmax(1))
            ]
        )
    assert ours.shape == ref.shape == (3, SIZE, SIZE)
    assert float(np.abs(ours - ref).max()) <= 1e-5
    assert float(ours.max()) > float(ours.min())


def test_cli_explains_a_folder_with_a_batch_1_graph(folded, tmp_path: Path) -> None:
    """``onnxcam explain`` on a folder of three images: each image's class and probability are the PyTorch model's on
    that image alone, and each map is saved at the image's size."""
    import json

    import cv2

    from onnxcam.preprocess import preprocess

    model, path, _ = folded
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for n in range(3):
        cv2.imwrite(str(folder / f"im{n}.png"), rng.integers(0, 256, (24, 20, 3), np.uint8))
    out = tmp_path / "out"
    args = ["explain", str(path), str(folder), "--out", str(out), "--save", "npy", "--quiet"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == ["im0.png", "im1.png", "im2.png"]
    explainer = Explainer(path, provider="cpu")
    for record in records:
        assert record["status"] == "ok", record
        image = explainer.explain(record["input"])[0]
        x = preprocess(cv2.imread(record["input"])[..., ::-1], explainer.preprocess)[None]
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(x)), 1)[0].numpy()
        assert record["class_index"] == int(probs.argmax())
        assert abs(record["probability"] - float(probs.max())) <= 1e-5
        saved = np.load(out / f"{record['name']}.gradcam.npy")
        assert saved.shape == (24, 20) and image.maps["gradcam"].shape == (SIZE, SIZE)
        assert np.isfinite(saved).all() and 0 <= saved.min() <= saved.max() <= 1


def _graph(batch: int, mixes: bool) -> onnx.ModelProto:
    """A hand-written classifier at fixed ``batch`` (8×8 input, 4 channels, 5 classes) with a Softmax over a folded
    reshape: ``[4·batch, 64]`` (the batch folded into rows: other batches fail) or ``[4, -1]`` (``mixes``: any batch
    runs, and the Softmax mixes the images of a batch)."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fold": np.array([4, -1] if mixes else [4 * batch, 64], np.int64),
        "unfold": np.array([-1 if mixes else batch, 4, 8, 8], np.int64),
        "axes": np.array([2, 3], np.int64),
        "flat": np.array([batch, 4], np.int64),
        "fc": rng.standard_normal((4, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["conv", "fold"], ["folded"]),
        helper.make_node("Softmax", ["folded"], ["soft"], axis=1),
        helper.make_node("Reshape", ["soft", "unfold"], ["back"]),
        helper.make_node("Mul", ["back", "conv"], ["map"]),
        helper.make_node("ReduceMean", ["map", "axes"], ["pooled"], keepdims=1),
        helper.make_node("Reshape", ["pooled", "flat"], ["flat_out"]),
        helper.make_node("MatMul", ["flat_out", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _alone(model: onnx.ModelProto, x: np.ndarray, batch: int) -> np.ndarray:
    """The source file's scores of ``x``, ``batch`` images per run (the last run padded by repeating a row)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = np.concatenate([x, np.repeat(x[-1:], -len(x) % batch, axis=0)])
    return np.concatenate([session.run(None, {"x": rows[i : i + batch]})[0] for i in range(0, len(rows), batch)])[
        : len(x)
    ]


@pytest.mark.parametrize(("batch", "mixes"), [(1, True), (2, False)])
def test_mixing_or_folded_source_keeps_its_batch(batch: int, mixes: bool, tmp_path: Path) -> None:
    """A rewrite that still runs but mixes the images of a batch (``[4, -1]`` then a Softmax) is caught, not kept;
    a batch of 2 is kept as 2: three images run as two chunks, the last padded, each image's scores those of the
    source file."""
    source = _graph(batch, mixes)
    path = tmp_path / "source.onnx"
    onnx.save(source, str(path))
    logs: list[str] = []
    out = tmp_path / "explainer.onnx"
    export_onnx_file(path, out, ["map"], (8, 8), mean=(0.0,), std=(1.0,), log=logs.append)
    kept = [line for line in logs if f"fixed batch of {batch}" in line]
    assert len(kept) == 1, logs
    assert ("mixes the images of a batch" in kept[0]) == mixes, kept
    explainer = Explainer(out, provider="cpu")
    assert explainer.metadata.fixed_batch == batch
    x = images(3)[:, :, :8, :8].copy()
    result = explainer.run(x, np.full(3, contract.TOP1, np.int64))
    assert result.scores.shape == (3, 5) and result.gradients["map"].shape == (3, 4, 8, 8)
    assert np.abs(result.scores - _alone(source, x, batch)).max() <= 1e-5 * np.abs(result.scores).max()


def test_batch_safe_fixed_file_becomes_dynamic(tmp_path: Path) -> None:
    """A fixed-batch file whose batch sits on its own axis (a plain conv net) still becomes batch-dynamic."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    source = tmp_path / "plain.onnx"
    torch.onnx.export(model.eval(), (torch.randn(1, 3, 8, 8),), str(source), dynamo=True, opset_version=18)
    logs: list[str] = []
    export_onnx_file(source, tmp_path / "e.onnx", None, (8, 8), log=logs.append)
    assert not any("fixed batch" in line for line in logs), logs
    assert Explainer(tmp_path / "e.onnx", provider="cpu").metadata.fixed_batch is None


def test_metadata_key_is_optional() -> None:
    """``onnxcam.fixed_batch`` is written only for a fixed batch; a file without it (older, or batch-dynamic) reads
    as any batch."""
    props = contract.Metadata(layers=("a",), fixed_batch=2).to_props()
    assert props[contract.META_FIXED_BATCH] == "2"
    assert contract.Metadata.from_props(props).fixed_batch == 2
    older = contract.Metadata(layers=("a",)).to_props()
    assert contract.META_FIXED_BATCH not in older and contract.Metadata.from_props(older).fixed_batch is None
