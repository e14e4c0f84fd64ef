"""Measurements that need a fresh process: ``python bench/workers.py TASK '{"json": "kwargs"}'``.

Each task prints one JSON object on its last stdout line. The onnxcam tasks never import torch, so their memory
is that of a deployment (onnxruntime + numpy + OpenCV).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np
from common import current_rss_mb, peak_rss_mb


def inputs(batch: int, size: int = 224) -> np.ndarray:
    """The benchmark's preprocessed batch: standard normal, seed 0 (the same in every process and in bench.py)."""
    return np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)


def _explainer(model: str, threads: int):
    from onnxcam.explainer import Explainer

    return Explainer(model, provider="cpu", threads=threads)


def _repeat(fn: Callable[[], object], repeats: int) -> dict:
    for _ in range(repeats):
        fn()
    return {"peak_mb": peak_rss_mb(), "rss_mb": current_rss_mb()}


def peak_onnxcam(model: str, batch: int, threads: int, repeats: int) -> dict:
    """Peak RSS of onnxcam Grad-CAM (explain_arrays) on one batch, ``repeats`` times."""
    explainer = _explainer(model, threads)
    x = inputs(batch)
    return _repeat(lambda: explainer.explain_arrays(x, methods=["gradcam"]), repeats)


def peak_ort(model: str, batch: int, threads: int, repeats: int) -> dict:
    """Peak RSS of a plain onnxruntime forward of the original model."""
    import onnxruntime as ort

    from onnxcam.providers import session_options

    session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
    x = inputs(batch)
    name = session.get_inputs()[0].name
    return _repeat(lambda: session.run(None, {name: x}), repeats)


def _torch_model(arch: str, threads: int):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch, torchvision.models.get_model(arch, weights=None).eval()


def peak_gradcam(arch: str, layers: list[str], batch: int, threads: int, repeats: int) -> dict:
    """Peak RSS of pytorch-grad-cam's GradCAM (targets None) on one batch."""
    from pytorch_grad_cam import GradCAM

    torch, model = _torch_model(arch, threads)
    x = torch.from_numpy(inputs(batch))
    with GradCAM(model=model, target_layers=[model.get_submodule(name) for name in layers]) as cam:
        return _repeat(lambda: cam(input_tensor=x, targets=None), repeats)


def peak_torch(arch: str, batch: int, threads: int, repeats: int) -> dict:
    """Peak RSS of a torch eager forward under no_grad."""
    torch, model = _torch_model(arch, threads)
    x = torch.from_numpy(inputs(batch))

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return _repeat(forward, repeats)


def flat(model: str, batch: int, threads: int, warmup: int, batches: int, samples: int) -> dict:
    """RSS after ``warmup`` batches, then every ``batches / samples`` batches of explain_arrays in one process."""
    explainer = _explainer(model, threads)
    x = inputs(batch)
    for _ in range(warmup):
        explainer.explain_arrays(x, methods=["gradcam"])
    trace = [(0, current_rss_mb())]
    every = max(1, batches // samples)
    started = time.perf_counter()
    for i in range(1, batches + 1):
        explainer.explain_arrays(x, methods=["gradcam"])
        if i % every == 0 or i == batches:
            trace.append((i, current_rss_mb()))
    seconds = time.perf_counter() - started
    return {"trace": trace, "images": batches * batch, "seconds": seconds, "peak_mb": peak_rss_mb()}


TASKS = {f.__name__: f for f in (peak_onnxcam, peak_ort, peak_gradcam, peak_torch, flat)}

if __name__ == "__main__":
    print(json.dumps(TASKS[sys.argv[1]](**json.loads(sys.argv[2]))), flush=True)
