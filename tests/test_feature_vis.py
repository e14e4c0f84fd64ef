"""``onnxcam visualize`` / :func:`onnxcam.feature_vis.visualize`: the class logit and a unit's value rise by stated
margins from the start image (values re-measured by torch on the written picture), the same seed gives the same
picture, and one-line refusals."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model
from small_models import GapNet, export_gapnet
from test_units import UnitNet

from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.feature_vis import Settings, visualize
from onnxcam.targets import TargetError

SETTINGS = Settings(steps=48)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("vis") / "gapnet.onnx", input_gradients=("standard",))


@pytest.fixture(scope="module")
def explainer(model: Path) -> Explainer:
    return Explainer(model, provider="cpu")


def _torch_scores(image: np.ndarray) -> np.ndarray:
    """GapNet's logits (torch, the exported weights) for a uint8 RGB picture, preprocessed with ImageNet mean/std."""
    torch.manual_seed(0)
    net = GapNet().eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((image / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    with torch.no_grad():
        return net(torch.tensor(x, dtype=torch.float32))[0].numpy()


def _noise_spread(explainer: Explainer, c: int) -> float:
    """Standard deviation of logit ``c`` over 32 start images (grey ± 0.1 noise): the scale of chance changes."""
    rng = np.random.default_rng(42)
    pixels = np.clip(0.5 + rng.uniform(-0.1, 0.1, (32, 32, 32, 3)), 0, 1)
    return float(np.std([_torch_scores(np.uint8(np.round(255 * p)))[c] for p in pixels]))


@pytest.mark.parametrize("c", [0, 9])
def test_class_logit_rises_far_beyond_chance(explainer: Explainer, c: int) -> None:
    result = visualize(explainer, c, SETTINGS)
    final = _torch_scores(result.image)[c]  # re-measured independently on the uint8 picture
    assert final == pytest.approx(result.final, abs=0.02)  # the quantised picture keeps what was reached
    gain = final - result.start
    assert gain > 0.1  # the logits of this random-init net are ~0.1 in size
    assert gain > 50 * _noise_spread(explainer, c)
    assert len(result.history) == SETTINGS.steps


def test_unit_value_rises_two_and_a_half_fold(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UnitNet().eval()
    with torch.no_grad():
        net.body[2].bias[0] = -100.0  # channel 0 of body.3 is off for every input: nothing to ascend
    path = tmp_path / "unit.onnx"
    export_model(
        net,
        path,
        ["body.1"],
        (32, 32),
        exporter="torchscript",
        input_gradients=("standard",),
        log=lambda _: None,
        unit_layer="body.3",
    )
    explainer = Explainer(path, provider="cpu")
    start = np.clip(0.5 + np.random.default_rng(0).uniform(-0.1, 0.1, (16, 3, 32, 32)), 0, 1)
    x = (start - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array([0.229, 0.224, 0.225])[:, None, None]
    means = explainer.run(x.astype(np.float32), np.full(16, -1)).unit.mean(axis=(0, 2, 3))
    channel = int(np.argmax(means))  # the channel most alive at the start: a factor means something, and is hardest
    result = visualize(explainer, f"channel:{channel}", SETTINGS)
    assert result.start > 0 and result.final >= 2.5 * result.start
    with pytest.raises(ValueError, match="gradient was zero at every step"):
        visualize(explainer, "channel:0", Settings(steps=4))


def test_same_seed_same_picture(explainer: Explainer) -> None:
    first = visualize(explainer, 3, Settings(steps=8, seed=7))
    again = visualize(explainer, 3, Settings(steps=8, seed=7))
    other = visualize(explainer, 3, Settings(steps=8, seed=8))
    np.testing.assert_array_equal(first.image, again.image)
    assert np.abs(first.image.astype(int) - other.image).mean() > 1


def test_cli_writes_the_picture(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "vis.png"
    args = ["visualize", str(model), "--target", "4", "--steps", "8", "-o", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "class 4" in result.output and "in 8 steps" in result.output
    assert cv2.imread(str(out)).shape == (32, 32, 3)
    top1 = CliRunner().invoke(main, [*args[:3], "top1", *args[4:]])
    assert top1.exit_code == 2 and "not top1" in top1.output


def test_refusals(explainer: Explainer, tmp_path: Path) -> None:
    plain = Explainer(export_gapnet(tmp_path / "plain.onnx"), provider="cpu")
    with pytest.raises(ValueError, match="re-export the graph with --input-gradient standard"):
        visualize(plain, 1)
    with pytest.raises(TargetError, match="not top1"):
        visualize(explainer, "top1")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        visualize(explainer, 1, Settings(steps=0))


class _DiskFull:
    """A file object that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> _DiskFull:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", [["visualize", "--target", "4", "--steps", "2"], ["maps", "--filters"]])
def test_picture_commands_write_atomically(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """A write cut short (disk full) leaves the previous picture whole and no partial file, with a one-line error."""
    out = tmp_path / "picture.png"
    before = cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))[1].tobytes()
    out.write_bytes(before)
    fdopen = os.fdopen
    monkeypatch.setattr("onnxcam.outputs.os.fdopen", lambda fd, mode: _DiskFull(fdopen(fd, mode)))
    result = CliRunner().invoke(main, [command[0], str(model), *command[1:], "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: cannot write {out}: No space left on device\n"
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]
