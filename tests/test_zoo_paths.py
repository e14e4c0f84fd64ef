"""A representative few of the zoo sweep (``bench/zoo_sweep.py``, results in ``docs/zoo.md``): a classifier with a
residual body, a depthwise/hard-swish mobile net and a dense segmentation model, each exported with both exporters,
from PyTorch (checked against float64 autograd) and from its own ``torch.onnx.export`` file (checked by float64
finite differences). Random init, 64 px."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from zoo_sweep import PATHS, one


@pytest.mark.heavy
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "lraspp_mobilenet_v3_large"])
def test_zoo_model_exports_and_verifies(name: str, path: str, tmp_path: Path) -> None:
    row = one(name, path, 64, str(tmp_path))
    assert row["summary"].startswith("relative error"), row
