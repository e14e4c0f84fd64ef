"""Export every torchvision classification model and three segmentation models with both exporters, from PyTorch and
from the model's own ONNX export (``torch.onnx.export``), random init at a small input size; write a results table.

One (model, path) per subprocess, one at a time (the machine is shared): a crash, a timeout or a run over the memory
budget (resident set polled every second, the process killed above ``--memory-gb``) costs one row. Models whose
estimated peak (parameters × :data:`BYTES_PER_PARAM`) exceeds the budget are not run and listed as such.
Paths: ``torch/dynamo`` and ``torch/torchscript`` (``export_model``, verified against float64 autograd);
``onnx/dynamo`` and ``onnx/torchscript`` (``torch.onnx.export`` of the plain model, then ``export_onnx_file``,
verified by float64 finite differences). Default layer, no input gradients, head graphs on.

    python bench/zoo_sweep.py [--size 64] [--timeout 900] [--memory-gb 10] [--only resnet18,fcn_resnet50]
        [--out docs/zoo.md]

Results are appended to ``<out>.jsonl`` as they come (a rerun skips the rows already there) and the markdown table
``<out>`` is rewritten after each row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATHS = ("torch/dynamo", "torch/torchscript", "onnx/dynamo", "onnx/torchscript")
SEGMENTATION = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
#: Why each row that is not verified is so: a limitation (one line) or an open bug in onnxcam (none at present).
CAUSES: dict[tuple[str, str], str] = {}
#: Models that need a larger input than the sweep's default (fixed positional embeddings, deep stride, windows).
MIN_SIZE = {"inception_v3": 80, "maxvit_t": 224, "googlenet": 64}
FIXED_SIZE_PREFIXES = ("vit_", "swin_", "maxvit")
#: Models whose fixed adaptive average pool would pool *up* at a small input, which the TorchScript exporter cannot
#: write: their TorchScript paths run at the size they were designed for, where the pool divides.
POOL_UP_PREFIXES = ("alexnet", "vgg")
#: One model per architecture family, run right after the segmentation models (breadth first: a new family brings
#: new ops and export patterns); the rest follow smallest first.
FIRST = (
    "resnet50",
    "densenet121",
    "efficientnet_v2_s",
    "inception_v3",
    "convnext_tiny",
    "swin_t",
    "vit_b_32",
    "swin_v2_t",
    "alexnet",
    "vgg11_bn",
    "maxvit_t",
    "resnext50_32x4d",
    "wide_resnet50_2",
)
#: Peak resident bytes per parameter of one export + float64 verification (the float32 model, the explainer graph, the
#: float64 reference model and the float64 weights of the graph's evaluation, ~1.5 GB of libraries): measured
#: 36–41 B on convnext_large (64 px) and vit_l_32 (224 px) after the memory work of 2026-11-30 (66 before, VGG-16).
#: Activations add to it where a model keeps many large ones (vit_l_16 at 224 px: 54 B).
BYTES_PER_PARAM = 40


def parameter_counts() -> dict[str, int]:
    """Parameters of every torchvision classification model (from its weights' metadata)."""
    import torchvision

    counts = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = torchvision.models.get_model_weights(name)
        counts[name] = next(iter(weights)).meta.get("num_params", 10**10) if weights else 10**10
    return counts


def too_large(memory_gb: float) -> dict[str, int]:
    """The classifiers whose estimated peak exceeds ``memory_gb``: ``{name: parameters}``."""
    return {n: p for n, p in parameter_counts().items() if p * BYTES_PER_PARAM > memory_gb * 1e9}


def models(memory_gb: float) -> list[str]:
    """The segmentation models, then :data:`FIRST`, then the other classifiers smallest first (by parameters); those
    estimated over ``memory_gb`` left out (see :func:`too_large`)."""
    counts = parameter_counts()
    skipped = too_large(memory_gb)
    rest = sorted((n for n in counts if n not in skipped and n not in FIRST), key=counts.__getitem__)
    return [*SEGMENTATION, *(n for n in FIRST if n not in skipped), *rest]


def input_size(name: str, path: str, size: int) -> int:
    """The sweep's input size for ``name`` along ``path``: ``size`` unless the model or the exporter needs more."""
    if name.startswith(FIXED_SIZE_PREFIXES) or (name.startswith(POOL_UP_PREFIXES) and path.endswith("torchscript")):
        return 224
    return max(size, MIN_SIZE.get(name, size))


class SourceExportError(RuntimeError):
    """``torch.onnx.export`` could not write the ONNX file an ``onnx/*`` path starts from."""


def one(name: str, path: str, size: int, workdir: str) -> dict:
    """Worker: export ``name`` along ``path``; returns the row (verdict ``verified`` / ``refused``)."""
    import warnings

    import torch
    import torchvision

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from onnxcam_export.api import export_model, export_onnx_file
    from onnxcam_export.memory import release

    if name in SEGMENTATION:
        sys.path.insert(0, str(REPO / "tests"))
        from small_models import SegmentationOut

        seg = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=21)
        model = SegmentationOut(seg).eval()
    else:
        model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():  # a zero-initialised head (torchvision's ViT) makes every gradient 0: nothing to verify
        for weight in model.parameters():
            if weight.dim() >= 2 and not weight.any():
                torch.nn.init.normal_(weight, std=0.02)
    source, exporter = path.split("/")
    out = Path(workdir) / f"{name}.{source}.{exporter}.onnx"
    logs: list[str] = []
    if source == "torch":
        _, report = export_model(model, out, None, (size, size), exporter=exporter, log=logs.append)
    else:
        plain = Path(workdir) / f"{name}.{exporter}.plain.onnx"
        try:
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
        except Exception as exc:  # no ONNX file to start from: the row says why in one line
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise SourceExportError(f"torch.onnx.export ({exporter}) of the model failed: {first}") from None
        del model  # a user exporting an ONNX file has no PyTorch model in memory: measure what they would see
        release()
        _, report = export_onnx_file(plain, out, None, (size, size), log=logs.append)
    return {"summary": report.summary() if report else "", "log": logs[-3:]}


def resident_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``; 0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) * 1024


def run_row(name: str, path: str, size: int, timeout: float, workdir: str, memory_gb: float) -> dict:
    """Run :func:`one` in a subprocess; the row's verdict (``verified``, ``refused``, ``crashed``, ``timeout`` or
    ``memory``), error / summary, seconds and peak resident GB (sampled every second)."""
    started = time.perf_counter()
    call = f"one({name!r}, {path!r}, {size}, {workdir!r})"
    code = f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); from zoo_sweep import one; "
    code += f"print('ROW' + json.dumps({call}))"
    peak = 0
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        while True:
            try:
                stdout, stderr = p.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                peak = max(peak, resident_bytes(p.pid))
                seconds = time.perf_counter() - started
                over = "timeout" if seconds > timeout else "memory" if peak > memory_gb * 2**30 else None
                if over:
                    p.kill()
                    p.communicate()
                    error = f"over {timeout:.0f} s" if over == "timeout" else f"over {memory_gb:g} GB resident"
                    return {"verdict": over, "error": error, "seconds": seconds, "peak_gb": peak / 2**30}
    seconds = time.perf_counter() - started
    rows = [line[3:] for line in stdout.splitlines() if line.startswith("ROW")]
    if p.returncode == 0 and rows:
        return {
            "verdict": "verified",
            "error": json.loads(rows[-1])["summary"],
            "seconds": seconds,
            "peak_gb": peak / 2**30,
        }
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
    error = lines[-1] if lines else f"exit {p.returncode}"
    refused = "onnxcam_export." in error.partition(":")[0]  # an ExportError: the one-line refusal a user gets
    kind = "refused" if refused else "no source" if "SourceExportError" in error.partition(":")[0] else "crashed"
    return {"verdict": kind, "error": error[:300], "seconds": seconds, "peak_gb": peak / 2**30}


def _load_note(rows: list[dict]) -> str:
    loads = [r["load"] for r in rows if "load" in r]
    dates = sorted({r["date"] for r in rows if "date" in r})
    note = f"{len(rows) - len(loads)} rows of earlier runs did not record the load (about 12 during the first)"
    if loads:
        note += (
            f"; the other {len(loads)} ({', '.join(dates)}) ran at a 1-minute load average of median "
            f"{statistics.median(loads):.1f} (range {min(loads):.1f}–{max(loads):.1f}) on 2 cores"
        )
    return note


def write_table(rows: list[dict], out: Path, size: int, memory_gb: float) -> None:
    done = {(r["model"], r["path"]): r for r in rows}
    tried = {p: [r for r in done.values() if r["path"] == p] for p in PATHS}
    verdicts = sorted({r["verdict"] for r in done.values()} - {"verified"})

    def count(path: str) -> str:
        others = [f"{sum(r['verdict'] == v for r in tried[path])} {v}" for v in verdicts]
        verified = sum(r["verdict"] == "verified" for r in tried[path])
        return f"{path} {verified}/{len(tried[path])}" + (f" ({', '.join(others)})" if others else "")

    counts = parameter_counts()
    reached = {m for m, _ in done}
    skipped = {m: p for m, p in too_large(memory_gb).items() if m not in reached}  # rows run with a larger budget
    waiting = [m for m in models(memory_gb) if m not in reached]
    partial = [m for m in dict.fromkeys(m for m, _ in done) if any((m, p) not in done for p in PATHS)]
    lines = [
        "# Model zoo sweep",
        "",
        f"Generated by `bench/zoo_sweep.py` (random init, all-zero weight matrices — ViT's head — redrawn N(0, 0.02²), "
        f"input {size}×{size} unless the model needs more, default "
        "layer, no input gradients, head graphs on). `torch/*`: `export_model` with that exporter, verified against "
        "float64 `torch.autograd`; `onnx/*`: `torch.onnx.export` with that exporter, then `export_onnx_file`, "
        f"verified by float64 finite differences. Models reached: {len(reached)} of "
        f"{len(counts) + len(SEGMENTATION)} ({len(counts)} torchvision classifiers + {len(SEGMENTATION)} segmentation "
        f"models); {len(skipped)} not run (below). Verified / tried per path: "
        + "; ".join(count(p) for p in PATHS)
        + ". `seconds` is the wall time of one subprocess (export, build, verification), `peak GB` its resident set "
        f"(sampled every second; killed above the run's `--memory-gb`: {memory_gb:g} GB, or up to 22.5 GB for the rows "
        "that peak higher, run alone) on a 2-core, 24 GB machine shared with other jobs: "
        + _load_note(list(done.values()))
        + ". Timeouts there are contention, not hangs. Rows in run order: segmentation, one model per family, then "
        "classifiers by size. Rerun to fill in the rest (finished rows are skipped).",
        "",
        f"Not reached yet ({len(waiting)}): {', '.join(waiting) or 'none'}. Reached, some paths missing: "
        + (", ".join(f"{m} ({', '.join(p for p in PATHS if (m, p) not in done)})" for m in partial) or "none")
        + ".",
        "",
        "Rows not verified, and why:",
        "",
        *(
            [
                f"- {m} {p} ({r['verdict']}): {CAUSES.get((m, p), 'not analysed yet')}."
                for (m, p), r in done.items()
                if r["verdict"] != "verified"
            ]
            or ["- none: every row tried is verified."]
        ),
        "",
        "| model | path | size | verdict | error / reason | seconds | peak GB |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for (model, path), r in done.items():
        error = r["error"].replace("|", "\\|")
        peak = f"{r['peak_gb']:.1f}" if "peak_gb" in r else ""
        size_px = r.get("size", size)
        lines.append(f"| {model} | {path} | {size_px} | {r['verdict']} | {error} | {r['seconds']:.0f} | {peak} |")
    for model, params in sorted(skipped.items(), key=lambda item: item[1]):
        estimate = params * BYTES_PER_PARAM / 1e9
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        over = f"over the {memory_gb:g} GB budget"
        over = f"more than this {machine:.1f} GB machine has" if estimate > machine else over
        reason = (
            f"{params / 1e6:.0f} M parameters: float64 verification needs ≈ {estimate:.1f} GB "
            f"({BYTES_PER_PARAM} B/parameter, measured on convnext_large and vit_l_32), {over}; run with "
            "`--memory-gb` on a larger machine"
        )
        lines.append(f"| {model} | all | | not run | {reason} | | |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--memory-gb", type=float, default=10)
    parser.add_argument("--only", default="")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "zoo.md")
    parser.add_argument("--workdir", default="/tmp/zoo_sweep")
    parser.add_argument("--rerun", default="", help="comma-separated verdicts whose rows are run again (refused,…)")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = args.out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    names = args.only.split(",") if args.only else models(args.memory_gb)
    again = set(filter(None, args.rerun.split(",")))
    if again:
        rows = [r for r in rows if not (r["verdict"] in again and r["model"] in names)]
        results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    seen = {(r["model"], r["path"]) for r in rows}
    for name in names:
        for path in PATHS:
            if (name, path) in seen:
                continue
            size = input_size(name, path, args.size)
            row = run_row(name, path, size, args.timeout, args.workdir, args.memory_gb)
            stamp = {"date": datetime.date.today().isoformat(), "load": os.getloadavg()[0]}
            row = {"model": name, "path": path, "size": size, **row, **stamp}
            line = f"{name:32s} {path:18s} {row['verdict']:9s} {row['seconds']:6.0f} s  {row['error'][:120]}"
            print(line, flush=True)
            rows.append(row)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            write_table(rows, args.out, args.size, args.memory_gb)
            for leftover in Path(args.workdir).glob(f"{name}.*"):
                leftover.unlink()


if __name__ == "__main__":
    main()
