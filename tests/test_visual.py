"""Overlays: ``show_cam_on_image`` must equal pytorch-grad-cam's; ``overlay`` and ``method_grid`` build on it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.visual import method_grid, overlay, show_cam_on_image

pytest.importorskip("torch")
reference = pytest.importorskip("pytorch_grad_cam.utils.image")

RNG = np.random.default_rng(0)
IMG = RNG.random((24, 40, 3), dtype=np.float32)
MASK = RNG.random((24, 40), dtype=np.float32)


@pytest.mark.parametrize("image_weight", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("colormap", [cv2.COLORMAP_JET, cv2.COLORMAP_VIRIDIS])
@pytest.mark.parametrize("use_rgb", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_show_cam_on_image_equals_reference(use_rgb: bool, colormap: int, image_weight: float, dtype: type) -> None:
    img, mask = IMG.astype(dtype), MASK.astype(dtype)
    ours = show_cam_on_image(img, mask, use_rgb=use_rgb, colormap=colormap, image_weight=image_weight)
    expected = reference.show_cam_on_image(img, mask, use_rgb, colormap, image_weight)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, expected)


def test_show_cam_on_image_rejects_what_the_reference_rejects() -> None:
    with pytest.raises(ValueError, match="range"):
        show_cam_on_image(IMG * 255, MASK)
    with pytest.raises(ValueError, match="image_weight"):
        show_cam_on_image(IMG, MASK, image_weight=1.5)


def test_show_cam_on_image_clips_bad_masks_and_keeps_black_black() -> None:
    bad = MASK.copy()
    bad[0, 0], bad[0, 1], bad[0, 2] = 1.7, -0.4, np.nan
    clean = MASK.copy()
    clean[0, 0], clean[0, 1], clean[0, 2] = 1.0, 0.0, 0.0
    np.testing.assert_array_equal(show_cam_on_image(IMG, bad), show_cam_on_image(IMG, clean))
    black = show_cam_on_image(np.zeros_like(IMG), np.zeros_like(MASK), colormap=cv2.COLORMAP_HOT, image_weight=0.5)
    assert not black.any()


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_overlay_resizes_the_map_to_the_original_image(alpha: float) -> None:
    image = np.uint8(RNG.integers(0, 256, (30, 50, 3)))
    small = RNG.random((7, 7), dtype=np.float32)
    out = overlay(image, small, alpha=alpha)
    mask = cv2.resize(small, (50, 30), interpolation=cv2.INTER_LINEAR)
    expected = reference.show_cam_on_image(np.float32(image) / 255, mask, True, cv2.COLORMAP_JET, 1 - alpha)
    assert out.shape == (30, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_overlay_accepts_gray_and_rgba_and_rejects_bad_input() -> None:
    gray = np.uint8(RNG.integers(0, 256, (16, 20)))
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((16, 20, 1), 7, np.uint8)], axis=2)
    cam_map = RNG.random((4, 5), dtype=np.float32)
    expected = overlay(rgb, cam_map)
    np.testing.assert_array_equal(overlay(gray, cam_map), expected)
    np.testing.assert_array_equal(overlay(rgba, cam_map), expected)
    np.testing.assert_array_equal(overlay(np.float32(rgb) / 255, cam_map), expected)
    with pytest.raises(ValueError, match="one"):
        overlay(rgb, cam_map[None])
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, cam_map, alpha=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(np.float32(rgb), cam_map)


def test_method_grid_layout_and_content() -> None:
    image = np.uint8(RNG.integers(0, 256, (60, 90, 3)))
    maps = {"gradcam": RNG.random((5, 5), dtype=np.float32), "layercam": np.zeros((3, 3), np.float32)}
    grid = method_grid(image, maps, tile_height=40, title_height=12, gap=3)
    tile_w = 60  # 90 · 40 / 60
    assert grid.shape == (12 + 40, 3 * tile_w + 2 * 3, 3) and grid.dtype == np.uint8

    base = cv2.resize(image, (tile_w, 40), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(grid[12:, :tile_w], base)
    for i, cam_map in enumerate(maps.values(), start=1):
        x0 = i * (tile_w + 3)
        np.testing.assert_array_equal(grid[12:, x0 : x0 + tile_w], overlay(base, cam_map))
        assert (grid[:, x0 - 3 : x0] == 255).all()  # white gap
    for i in range(3):
        band = grid[:12, i * (tile_w + 3) : i * (tile_w + 3) + tile_w]
        assert (band < 128).any() and (band == 255).mean() > 0.5  # dark title text on a white band
