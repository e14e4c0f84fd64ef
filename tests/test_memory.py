"""A long batch job runs in flat memory: 2,000 images, no resident-set growth beyond a small bound after warm-up."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from small_models import export_gapnet

from onnxcam.batch import BatchOptions, run_batch

IMAGES = 2000
WARM_UP = 200
BOUND_MB = 50.0


def rss_mb() -> float:
    """This process's resident set size (``VmRSS`` of ``/proc/self/status``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


@pytest.mark.slow  # ~15 s on 2 cores
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_rss_stays_flat_over_2000_images(tmp_path: Path) -> None:
    model = export_gapnet(tmp_path / "gap.onnx", layers=("body.1", "body.3"))
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        size = (40 + i % 7, 48 + i % 5)  # a few sizes: the resize and the overlay allocate per image
        cv2.imwrite(str(folder / f"im{i:04d}.png"), rng.integers(0, 256, (*size, 3), np.uint8))
    samples: list[float] = []

    def sample(record: dict, skipped: bool) -> None:
        assert record["status"] == "ok", record["error"]
        samples.append(rss_mb())

    options = BatchOptions(methods=("gradcam", "layercam"), save=("overlay", "npy"), batch_size=16)
    summary = run_batch(model, [folder], tmp_path / "out", options, provider="cpu", threads=1, on_result=sample)
    assert summary.ok == IMAGES and len(samples) == IMAGES
    warm = samples[WARM_UP - 1]
    growth = max(samples[WARM_UP:]) - warm
    print(f"RSS after {WARM_UP} images {warm:.1f} MB, at the end {samples[-1]:.1f} MB, max growth {growth:.1f} MB")
    assert growth < BOUND_MB
