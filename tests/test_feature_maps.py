"""``onnxcam maps``: the grid's tiles equal the layer's activations (torch, normalised) for the channels torch ranks
first; ``--filters`` equals the first convolution's weights; one-line refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from small_models import GapNet, export_gapnet

from onnxcam.cli import main
from onnxcam.contract import Preprocess
from onnxcam.feature_maps import first_conv_weights, layout_for
from onnxcam.images import read_image
from onnxcam.preprocess import preprocess_batch


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("maps") / "gapnet.onnx")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return path


def _torch_layer(image: Path) -> tuple[np.ndarray, np.ndarray]:
    """body.3's activation ``[C, h, w]`` and the top-1 logit's gradient on it, by torch."""
    torch.manual_seed(0)  # the weights export_gapnet exported
    net = GapNet().eval()
    x = torch.from_numpy(preprocess_batch([read_image(image)], Preprocess(input_size=(32, 32))))
    taps: dict[str, torch.Tensor] = {}
    hook = net.body[3].register_forward_hook(lambda _m, _i, o: taps.__setitem__("a", o))
    scores = net(x)
    hook.remove()
    (grad,) = torch.autograd.grad(scores[0, scores[0].argmax()], [taps["a"]])
    return taps["a"][0].detach().numpy(), grad[0].numpy()


def _run(*args: object) -> str:
    result = CliRunner().invoke(main, ["maps", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _tiles(png: Path, count: int, shape: tuple[int, int], tile_side: int) -> list[np.ndarray]:
    grid = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    layout = layout_for(count, shape, tile_side)
    assert grid.shape[:2] == layout.size
    return [grid[layout.box(i)] for i in range(count)]


def _expected(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What a tile must hold: min-max normalised, nearest-neighbour upscaled, 0–255."""
    v = (values - values.min()) / (values.max() - values.min())
    big = np.kron(v, np.ones((size[0] // v.shape[0], size[1] // v.shape[1], *([1] * (v.ndim - 2)))))
    return np.round(255 * big)


@pytest.mark.parametrize("by", ["activation", "gradient"])
def test_tiles_are_the_layer_activations_of_the_top_channels(model: Path, image: Path, tmp_path: Path, by: str) -> None:
    acts, grads = _torch_layer(image)
    ranking = (acts if by == "activation" else grads).mean(axis=(1, 2))
    expected_order = np.argsort(-ranking)[:5]
    out = tmp_path / "grid.png"
    printed = _run(model, image, "--layer", "body.3", "--top", 5, "--by", by, "-o", out)
    assert f"channels {', '.join(map(str, expected_order))} (by {by})" in printed
    for tile, c in zip(_tiles(out, 5, acts.shape[1:], 96), expected_order, strict=True):
        assert np.abs(tile.astype(float) - _expected(acts[c], tile.shape[:2])[..., None]).max() <= 1


def test_filters_are_the_first_convolution_weights(model: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)  # the weights export_gapnet exported
    weights = GapNet().body[0].weight.detach().numpy()  # [8, 3, 3, 3]
    out = tmp_path / "filters.png"
    _run(model, "--filters", "-o", out)
    for tile, w in zip(_tiles(out, 8, (3, 3), 48), weights, strict=True):
        assert np.abs(tile.astype(float) - _expected(w.transpose(1, 2, 0), tile.shape[:2])).max() <= 1


def test_refusals(model: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = CliRunner().invoke(main, ["maps", str(model), str(image), "--layer", "nope", "-o", str(tmp_path / "g.png")])
    assert bad.exit_code == 2 and "'nope' is not in this graph; it has: body.3" in bad.output
    no_image = CliRunner().invoke(main, ["maps", str(model), "-o", str(tmp_path / "g.png")])
    assert no_image.exit_code == 2 and "give an IMAGE (or --filters)" in no_image.output
    out = tmp_path / "f.png"
    with_image = CliRunner().invoke(main, ["maps", str(model), str(image), "--filters", "-o", str(out)])
    assert with_image.exit_code == 2 and not out.exists(), with_image.output
    assert with_image.output.splitlines()[-1] == (
        "Error: --filters shows the first convolution's weights, the same for every image, so IMAGE would be "
        "ignored: drop it, or drop --filters for the image's feature maps"
    )
    with_options = CliRunner().invoke(
        main, ["maps", str(model), "--filters", "--top", "3", "--by", "gradient", "-o", str(out)]
    )
    assert with_options.exit_code == 2 and "so --top, --by would be ignored: drop them" in with_options.output
    monkeypatch.setitem(sys.modules, "onnx", None)  # the runtime without the export extra
    with pytest.raises(ValueError, match=r"onnx package: pip install 'onnxcam\[export\]'"):
        first_conv_weights(str(model))
