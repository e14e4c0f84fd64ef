"""In-graph Grad-CAM (``cam:gradcam``, one session run) vs the activations + gradients run + Python CAM math (CPU).

``python bench/in_graph.py [--out BENCHMARKS.md] [--runs 7] [--threads 2]`` writes the section "In-graph maps" of
``--out`` (``-`` prints it). Random-init torchvision resnet50 (layer4) and mobilenet_v3_large (features.16) at 224²,
batch 8, exported with ``--in-graph gradcam`` (TorchScript tracer, no verification: the tests verify). Columns:
``session run, cam:gradcam``: one run whose output is the final map (what a C++/JS caller does);
``session run, A + G``: the same file with ``compute:cam:gradcam`` off (what the Python runtime runs);
``Python CAM math``: :func:`onnxcam.methods.grad_cam` + :func:`onnxcam.postprocess.postprocess` on its outputs;
``Explainer.explain_arrays``: the whole Python runtime call (scores, top-k, map). Milliseconds per batch of 8, median
of ``--runs`` rounds after 2 warm-up rounds, the columns taking turns within each round; ``max abs diff``: in-graph
map vs the Python runtime's on the benchmark batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import REPO, Table
from workers import inputs

MODELS = (("resnet50", "layer4"), ("mobilenet_v3_large", "features.16"))
BATCH, WARMUP = 8, 2
HEADERS = ["model", "layer", "session run, cam:gradcam", "session run, A + G", "Python CAM math", "A + G + math"]
HEADERS += ["Explainer.explain_arrays", "in-graph / (A + G + math)", "max abs diff"]


def interleaved(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median milliseconds of each call over ``runs`` rounds after ``WARMUP`` ones, the calls taking turns within a
    round: on a shared machine a burst of load then falls on every column alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(WARMUP + runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= WARMUP:
                times[name].append(1000 * (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in times.items()}


def measure(arch: str, layer: str, folder: Path, threads: int, runs: int) -> list[str]:
    """One table row for ``arch``: milliseconds per batch and the in-graph map's largest difference."""
    import torch
    import torchvision
    from onnxcam_export.api import export_model

    from onnxcam import contract
    from onnxcam.explainer import Explainer
    from onnxcam.methods import grad_cam
    from onnxcam.postprocess import postprocess

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    path = folder / f"{arch}.onnx"
    export_model(model, path, [layer], exporter="torchscript", verify=False, heads=False, in_graph=["gradcam"])
    del model
    explainer = Explainer(path, provider="cpu", threads=threads)
    session = explainer.graph.session
    x = inputs(BATCH)
    cam = contract.cam_name("gradcam")
    feeds = {contract.INPUT: x, contract.TARGET: np.full(BATCH, contract.TOP1, np.int64)}
    feeds[contract.GRADIENTS_SWITCH] = np.array(True)
    with_cam = {**feeds, contract.switch_name(cam): np.array(True)}
    without = {**feeds, contract.switch_name(cam): np.array(False)}
    tensors = [contract.activation_name(layer), contract.gradient_name(layer)]

    def python_math(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        return postprocess([grad_cam(a, g)], (x.shape[3], x.shape[2]))

    a, g = session.run(tensors, without)
    ms = interleaved(
        {
            "in_graph": lambda: session.run([cam], with_cam),
            "run": lambda: session.run(tensors, without),
            "math": lambda: python_math(a, g),
            "both": lambda: python_math(*session.run(tensors, without)),
            "explainer": lambda: explainer.explain_arrays(x, methods=("gradcam",)),
        },
        runs,
    )
    ours = session.run([cam], with_cam)[0]
    ref = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, methods=("gradcam",))])
    cells = [f"{ms[k]:.0f}" for k in ("in_graph", "run", "math", "both", "explainer")]
    return [arch, layer, *cells, f"{ms['in_graph'] / ms['both']:.2f}×", f"{float(np.abs(ours - ref).max()):.1e}"]


def in_graph_table(threads: int, runs: int) -> Table:
    load = os.getloadavg()[0]
    busy = ": a shared, busy machine, compare within rows only" if load > 1.5 else ""
    table = Table(
        "In-graph maps vs the Python runtime (Grad-CAM, batch 8, CPU)",
        HEADERS,
        note=f"Written by `python bench/in_graph.py` ({runs} runs, {threads} threads; load average {load:.1f} on "
        f"{os.cpu_count()} cores at the start{busy})."
        " Milliseconds per batch of 8 (lower is better), median of rounds in which the columns take turns; "
        "random-init weights, 224×224. `cam:gradcam` is one session run whose output is the final map; `A + G` is "
        "the same file with that output switched off, followed by the "
        "Python runtime's numpy/OpenCV math. `max abs diff`: in-graph map vs `Explainer.explain_arrays` on this batch.",
    )
    with tempfile.TemporaryDirectory(prefix="onnxcam-bench-in-graph-") as tmp:
        for arch, layer in MODELS:
            table.add(*measure(arch, layer, Path(tmp), threads, runs))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update, or - to print")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    table = in_graph_table(args.threads, args.runs)
    if args.out == "-":
        print(table.markdown())
        return
    from bench import replace_section

    out = Path(args.out)
    out.write_text(replace_section(out.read_text(encoding="utf-8"), table), encoding="utf-8")
    print(f"wrote section '{table.title}' to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
