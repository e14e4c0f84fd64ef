"""Execution-provider selection; CUDA tests skip cleanly where onnxruntime has no CUDA provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from small_models import export_gapnet

from onnxcam.explainer import Explainer
from onnxcam.providers import CPU, CUDA, CUDA_OPTIONS, ProviderError, cuda_available, provider_list

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="onnxruntime has no CUDA execution provider here")


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("providers") / "small.onnx")


def test_cpu_is_always_available(small_graph: Path) -> None:
    assert provider_list("cpu") == [CPU]
    assert Explainer(small_graph, provider="cpu").provider == CPU


def test_auto_picks_cuda_only_when_offered(small_graph: Path) -> None:
    expected = [(CUDA, CUDA_OPTIONS), CPU] if cuda_available() else [CPU]
    assert provider_list("auto") == expected
    assert Explainer(small_graph, provider="auto").provider in (CUDA, CPU)


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ProviderError, match="unknown provider 'tpu'"):
        provider_list("tpu")


@pytest.mark.skipif(cuda_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_clearly() -> None:
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        provider_list("cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_maps_equal_cpu_maps(small_graph: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    methods = ["gradcam", "gradcam++", "layercam", "eigencam"]
    gpu = Explainer(small_graph, provider="cuda")
    assert gpu.provider == CUDA
    cpu = Explainer(small_graph, provider="cpu")
    for a, b in zip(gpu.explain_arrays(x, methods=methods), cpu.explain_arrays(x, methods=methods), strict=True):
        assert a.class_index == b.class_index
        for m in methods:
            np.testing.assert_allclose(a.maps[m], b.maps[m], atol=1e-5)  # TF32 off: float32 either side
