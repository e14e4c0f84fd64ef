"""Export every torchvision classification model and three segmentation models with both exporters, from PyTorch and
from the model's own ONNX export (``torch.onnx.export``), random init at a small input size; write a results table.

One (model, path) per subprocess, one at a time (the machine is shared): a crash or a timeout costs one row.
Paths: ``torch/dynamo`` and ``torch/torchscript`` (``export_model``, verified against float64 autograd);
``onnx/dynamo`` and ``onnx/torchscript`` (``torch.onnx.export`` of the plain model, then ``export_onnx_file``,
verified by float64 finite differences). Default layer, no input gradients, head graphs on.

    python bench/zoo_sweep.py [--size 64] [--timeout 600] [--only resnet18,fcn_resnet50] [--out docs/zoo.md]

Results are appended to ``<out>.jsonl`` as they come (a rerun skips the rows already there) and the markdown table
``<out>`` is rewritten after each row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATHS = ("torch/dynamo", "torch/torchscript", "onnx/dynamo", "onnx/torchscript")
SEGMENTATION = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
#: Models that need a larger input than the sweep's default (fixed positional embeddings, deep stride, windows).
MIN_SIZE = {"inception_v3": 80, "maxvit_t": 224, "googlenet": 64}
FIXED_SIZE_PREFIXES = ("vit_", "swin_", "maxvit")
#: Too large for a 2-core CI box (minutes per forward in float64, gigabytes of weights).
SKIPPED = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf"}


def models() -> list[str]:
    """The segmentation models, then the classification models smallest first (by parameter count)."""
    import torchvision

    names = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in SKIPPED]
    sizes = {}
    for name in names:
        weights = torchvision.models.get_model_weights(name)
        meta = next(iter(weights)).meta if weights else {}
        sizes[name] = meta.get("num_params", 10**10)
    return list(SEGMENTATION) + sorted(names, key=sizes.__getitem__)


def input_size(name: str, size: int) -> int:
    if name.startswith(FIXED_SIZE_PREFIXES):
        return 224
    return max(size, MIN_SIZE.get(name, size))


def one(name: str, path: str, size: int, workdir: str) -> dict:
    """Worker: export ``name`` along ``path``; returns the row (verdict ``verified`` / ``refused``)."""
    import warnings

    import torch
    import torchvision

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from onnxcam_export.api import export_model, export_onnx_file

    if name in SEGMENTATION:
        sys.path.insert(0, str(REPO / "tests"))
        from small_models import SegmentationOut

        seg = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=21)
        model = SegmentationOut(seg).eval()
    else:
        model = torchvision.models.get_model(name, weights=None).eval()
    source, exporter = path.split("/")
    out = Path(workdir) / f"{name}.{source}.{exporter}.onnx"
    logs: list[str] = []
    if source == "torch":
        _, report = export_model(model, out, None, (size, size), exporter=exporter, log=logs.append)
    else:
        plain = Path(workdir) / f"{name}.{exporter}.plain.onnx"
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            str(plain),
            input_names=["images"],
            output_names=["logits"],
            opset_version=18,
            dynamo=exporter == "dynamo",
            dynamic_axes=None if exporter == "dynamo" else {"images": {0: "batch"}, "logits": {0: "batch"}},
        )
        _, report = export_onnx_file(plain, out, None, (size, size), log=logs.append)
    return {"summary": report.summary() if report else "", "log": logs[-3:]}


def run_row(name: str, path: str, size: int, timeout: float, workdir: str) -> dict:
    started = time.perf_counter()
    call = f"one({name!r}, {path!r}, {size}, {workdir!r})"
    code = f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); from zoo_sweep import one; "
    code += f"print('ROW' + json.dumps({call}))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"verdict": "timeout", "error": f"over {timeout:.0f} s", "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    rows = [line[3:] for line in proc.stdout.splitlines() if line.startswith("ROW")]
    if proc.returncode == 0 and rows:
        return {"verdict": "verified", "error": json.loads(rows[-1])["summary"], "seconds": seconds}
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    error = lines[-1] if lines else f"exit {proc.returncode}"
    refused = "onnxcam_export." in error.partition(":")[0]  # an ExportError: the one-line refusal a user gets
    kind = "refused" if refused else "crashed"
    return {"verdict": kind, "error": error[:300], "seconds": seconds}


def write_table(rows: list[dict], out: Path, size: int) -> None:
    done = {(r["model"], r["path"]): r for r in rows}
    counts = {p: sum(1 for r in rows if r["path"] == p and r["verdict"] == "verified") for p in PATHS}
    tried = {p: sum(1 for r in rows if r["path"] == p) for p in PATHS}
    lines = [
        "# Model zoo sweep",
        "",
        f"Generated by `bench/zoo_sweep.py` (random init, input {size}×{size} unless the model needs more, default "
        "layer, no input gradients, head graphs on). `torch/*`: `export_model` with that exporter, verified against "
        "float64 `torch.autograd`; `onnx/*`: `torch.onnx.export` with that exporter, then `export_onnx_file`, "
        "verified by float64 finite differences. Verified / tried: "
        + ", ".join(f"{p} {counts[p]}/{tried[p]}" for p in PATHS)
        + ". `seconds` is wall time of one subprocess (export, build, verification) on a 2-core machine shared "
        "with other jobs (load ~12 during the first run: the timeouts there are contention, not hangs); rows in "
        "run order, segmentation first, then classifiers by size. Rerun to fill in the rest (finished rows are "
        "skipped).",
        "",
        "| model | path | verdict | error / reason | seconds |",
        "|---|---|---|---|---:|",
    ]
    for (model, path), r in done.items():
        error = r["error"].replace("|", "\\|")
        lines.append(f"| {model} | {path} | {r['verdict']} | {error} | {r['seconds']:.0f} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only", default="")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "zoo.md")
    parser.add_argument("--workdir", default="/tmp/zoo_sweep")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = args.out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    seen = {(r["model"], r["path"]) for r in rows}
    names = args.only.split(",") if args.only else models()
    for name in names:
        for path in PATHS:
            if (name, path) in seen:
                continue
            size = input_size(name, args.size)
            row = {"model": name, "path": path, "size": size, **run_row(name, path, size, args.timeout, args.workdir)}
            line = f"{name:32s} {path:18s} {row['verdict']:9s} {row['seconds']:6.0f} s  {row['error'][:120]}"
            print(line, flush=True)
            rows.append(row)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            write_table(rows, args.out, args.size)
            for leftover in Path(args.workdir).glob(f"{name}.*"):
                leftover.unlink()


if __name__ == "__main__":
    main()
