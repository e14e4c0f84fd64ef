"""GridSample VJP (w.r.t. the input and the grid) vs torch autograd (float32, relative tolerance 1e-5).

Grids reach a little outside ``[−1, 1]`` so that zeros padding drops corners and border padding clamps points.
"""

import gradcheck
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_vjp
from onnx import helper
from onnxcam_export.autodiff.context import GradientError

RNG = np.random.default_rng(0)


def x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def grid(n: int, h: int, w: int, reach: float = 1.2) -> np.ndarray:
    return RNG.uniform(-reach, reach, (n, h, w, 2)).astype(np.float32)


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("wrt", [["x", "g"], ["x"], ["g"]], ids="+".join)
def test_grid_sample(mode: str, padding: str, align: int, wrt: list[str]) -> None:
    if mode == "nearest" and wrt == ["g"]:
        pytest.skip("nothing flows to the grid through nearest sampling")
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=padding, align_corners=align)

    def reference(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(t, g, mode=mode, padding_mode=padding, align_corners=bool(align))

    check_vjp(node, {"x": x(2, 3, 5, 6), "g": grid(2, 4, 7)}, wrt, reference)


def test_grid_sample_opset20_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opset 20 renames bilinear → linear."""
    monkeypatch.setattr(gradcheck, "OPSET", 20)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode="linear", padding_mode="border")
    reference = lambda t, g: F.grid_sample(t, g, padding_mode="border", align_corners=False)  # noqa: E731
    check_vjp(node, {"x": x(2, 3, 5, 6), "g": grid(2, 4, 7)}, ["x", "g"], reference)


def test_grid_sample_upsampling_grid_of_an_affine_map() -> None:
    """A spatial-transformer grid (``affine_grid``) that samples the input more densely than its pixels."""
    theta = torch.tensor([[[0.8, 0.1, 0.05], [-0.1, 0.9, 0.0]]] * 2)
    g = F.affine_grid(theta, [2, 3, 11, 13], align_corners=False).numpy()
    node = helper.make_node("GridSample", ["x", "g"], ["y"])
    reference = lambda t, gg: F.grid_sample(t, gg, align_corners=False)  # noqa: E731
    check_vjp(node, {"x": x(2, 3, 5, 6), "g": g}, ["x", "g"], reference)


@pytest.mark.parametrize(("mode", "padding"), [("bicubic", "zeros"), ("bilinear", "reflection")])
def test_grid_sample_other_modes_are_refused(mode: str, padding: str) -> None:
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=padding)
    reference = lambda t, g: F.grid_sample(t, g, mode=mode, padding_mode=padding, align_corners=False)  # noqa: E731
    with pytest.raises(GradientError, match="only 2-D bilinear/nearest"):
        check_vjp(node, {"x": x(2, 3, 5, 6), "g": grid(2, 4, 7)}, ["x"], reference)


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (2, 1, 3, 4, 5)], ids=["2d", "3d"])
def test_affine_grid(size: tuple[int, ...], align: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gradcheck, "OPSET", 20)
    rank = len(size) - 2
    theta = (np.eye(rank, rank + 1)[None] + 0.3 * x(size[0], rank, rank + 1)).astype(np.float32)
    node = helper.make_node("AffineGrid", ["theta", "size"], ["y"], align_corners=align)
    reference = lambda t: F.affine_grid(t, list(size), align_corners=bool(align))  # noqa: E731
    check_vjp(node, {"theta": theta}, ["theta"], reference, constants={"size": np.array(size, np.int64)})
