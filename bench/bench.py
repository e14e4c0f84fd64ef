"""onnxcam vs onnxruntime forward vs pytorch-grad-cam vs torch eager, side by side on one machine.

    python bench/bench.py [--quick] [--out BENCHMARKS.md] [--threads 2] [--runs 7]

Throughput (images/s, median of ``--runs`` timed runs after warm-up, same seeded inputs, random-init torchvision
weights, 224², CPU, the same intra-op thread count everywhere), a mid-network layer and a 3-layer fusion, where
onnxcam's time goes, cold start of a fresh process, import time, peak memory, install footprint and memory over a
long run; CUDA rows when onnxruntime has the CUDA provider. Prints a markdown report to stdout, each row to stderr
as it is measured, and writes it to ``--out`` (a full run: ``BENCHMARKS.md``; ``--quick``: a file under /tmp).
Benchmarks never assert timings: the targets section says met or missed with the measured value.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from common import REPO, Table, fmt, median_seconds, ratio, run_worker, timed_subprocess
from footprint import RUNTIME, TORCH_STACK, footprint
from methods import methods_table
from vit import vit_table
from workers import inputs

MAIN_MODELS = (
    ("resnet50", ("layer4",)),
    ("mobilenet_v3_large", ("features.16",)),
    ("efficientnet_b0", ("features.8",)),
    ("vgg16", ("features.29",)),
)
COLD_MODEL = ("mobilenet_v3_large", ("features.16",))
FLAT_LIMIT_MB = 10.0
T = TypeVar("T")
PGC_SCRIPT = """
import sys
import cv2, numpy as np, torch, torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image

arch, layer, weights, image, out, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
model = torchvision.models.get_model(arch, weights=None)
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
x = cv2.resize(rgb, (224, 224)).astype(np.float32) / 255
x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
x = torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)
with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
    gray = cam(input_tensor=x, targets=None)[0]
gray = cv2.resize(gray, (rgb.shape[1], rgb.shape[0]))
overlay = show_cam_on_image(rgb.astype(np.float32) / 255, gray, use_rgb=True)
cv2.imwrite(out, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
"""


@dataclass(frozen=True)
class Config:
    """What one run measures; ``--quick`` shrinks everything to prove the script works end to end."""

    quick: bool
    threads: int
    runs: int
    warmup: int
    batches: tuple[int, ...]
    models: tuple[tuple[str, tuple[str, ...]], ...]
    resnet: str
    flat_batches: int
    subprocess_runs: int
    exporter: str

    @property
    def big(self) -> int:
        return max(self.batches)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        if args.quick:
            return cls(True, args.threads, args.runs or 2, 1, (1, 2), (COLD_MODEL,), "resnet18", 20, 1, args.exporter)
        return cls(
            False, args.threads, args.runs or 7, 2, (1, 8), MAIN_MODELS, "resnet50", args.flat_batches, 5, args.exporter
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def attempt(what: str, fn: Callable[[], T]) -> T | None:
    """``fn()``, or ``None`` with the error on stderr: one failing measurement must not end the benchmark."""
    try:
        return fn()
    except Exception as exc:
        log(f"  ! {what}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        return None


# ------------------------------------------------------------------------------------------------- models, exports


@dataclass
class Lab:
    """Random-init torchvision models and their ONNX exports (plain forward and explainer graphs), made once each."""

    cfg: Config
    workdir: Path
    _models: dict = field(default_factory=dict)
    _sessions: dict = field(default_factory=dict)

    def model(self, arch: str):
        if arch not in self._models:
            import torch
            import torchvision

            torch.manual_seed(0)
            self._models[arch] = torchvision.models.get_model(arch, weights=None).eval()
        return self._models[arch]

    def _file(self, name: str, make: Callable[[Path], None]) -> Path:
        path = self.workdir / name
        if not path.exists():
            log(f"  making {name} …")
            make(path)
        return path

    def plain(self, arch: str) -> Path:
        """The original model exported with the same exporter and settings as the explainer, without taps."""
        import onnx
        from onnxcam_export.torch_capture import to_onnx

        def make(path: Path) -> None:
            onnx.save_model(to_onnx(self.model(arch), [], (224, 224), exporter=self.cfg.exporter), str(path))

        return self._file(f"{arch}.plain.onnx", make)

    def explainer(self, arch: str, layers: tuple[str, ...], input_gradients: tuple[str, ...] = ()) -> Path:
        """The explainer graph (verification skipped: the test suite checks the gradients)."""
        from onnxcam_export.api import export_model

        def make(path: Path) -> None:
            export_model(
                self.model(arch),
                path,
                list(layers),
                exporter=self.cfg.exporter,
                verify=False,
                input_gradients=input_gradients,
                log=log,
            )

        suffix = "".join(f".{rule}" for rule in input_gradients)
        return self._file(f"{arch}.{'+'.join(layers)}{suffix}.onnx", make)

    def weights(self, arch: str) -> Path:
        import torch

        return self._file(f"{arch}.pt", lambda path: torch.save(self.model(arch).state_dict(), path))

    def ort_session(self, arch: str, provider: str):
        key = (arch, provider)
        if key not in self._sessions:
            import onnxruntime as ort

            from onnxcam.providers import provider_list, session_options

            path = str(self.plain(arch))
            self._sessions[key] = ort.InferenceSession(
                path, session_options(self.cfg.threads), providers=provider_list(provider)
            )
        return self._sessions[key]

    def forget(self, arch: str) -> None:
        """Drop the torch model and sessions of ``arch`` to keep memory low (files stay; seed 0 rebuilds the same)."""
        self._models.pop(arch, None)
        for key in [k for k in self._sessions if k[0] == arch]:
            del self._sessions[key]
        gc.collect()


# ------------------------------------------------------------------------------------------------------ throughput

COLUMNS = ("ort", "onnxcam", "graph", "pgc", "torch")
THROUGHPUT_HEADERS = [
    "model",
    "layer(s)",
    "batch",
    "ORT forward",
    "onnxcam Grad-CAM",
    "explainer graph",
    "pytorch-grad-cam",
    "torch eager",
    "onnxcam / ORT",
    "onnxcam / pgc",
]


def throughput(lab: Lab, arch: str, layers: tuple[str, ...], batch: int, provider: str = "cpu") -> dict:
    """Images/s of the five contenders on one seeded batch; ``None`` where one failed or does not apply."""
    import torch
    from pytorch_grad_cam import GradCAM

    from onnxcam.explainer import Explainer

    cfg = lab.cfg
    device = "cuda" if provider == "cuda" else "cpu"
    x = inputs(batch)
    session = lab.ort_session(arch, provider)  # exports from the CPU model first
    name = session.get_inputs()[0].name
    explainer = Explainer(lab.explainer(arch, layers), provider=provider, threads=cfg.threads)
    targets = explainer.targets(None, batch)
    model = lab.model(arch).to(device)
    xt = torch.from_numpy(x).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        def once() -> None:
            fn()
            sync()

        return batch / median_seconds(once, cfg.warmup, cfg.runs)

    def eager() -> None:
        with torch.no_grad():
            model(xt)

    def pgc() -> float:
        with GradCAM(model=model, target_layers=[model.get_submodule(name) for name in layers]) as cam:
            return timed(lambda: cam(input_tensor=xt, targets=None))

    torch_ok = device == "cpu" or torch.cuda.is_available()
    speed = {
        "ort": attempt("ORT forward", lambda: timed(lambda: session.run(None, {name: x}))),
        "torch": attempt("torch eager", lambda: timed(eager)) if torch_ok else None,
        "graph": attempt("explainer graph", lambda: timed(lambda: explainer.run(x, targets))),
        "onnxcam": attempt("onnxcam", lambda: timed(lambda: explainer.explain_arrays(x, methods=["gradcam"]))),
        "pgc": attempt("pytorch-grad-cam", pgc) if torch_ok else None,
    }
    lab.model(arch).to("cpu")
    return speed


def throughput_table(lab: Lab, title: str, configs: Sequence[tuple[str, tuple[str, ...]]], provider: str) -> tuple:
    """One row per model/layers/batch; returns the table and ``{(arch, layers, batch): speeds}``."""
    table = Table(title, THROUGHPUT_HEADERS, note="Images per second (higher is better).")
    results = {}
    for i, (arch, layers) in enumerate(configs):
        for batch in lab.cfg.batches:
            s = attempt(
                f"{arch} batch {batch}",
                lambda arch=arch, layers=layers, batch=batch: throughput(lab, arch, layers, batch, provider),
            ) or dict.fromkeys(COLUMNS)
            results[(arch, layers, batch)] = s
            table.add(
                arch,
                " + ".join(layers),
                batch,
                *(fmt(s[c]) for c in COLUMNS),
                fmt(ratio(s["onnxcam"], s["ort"]), 2, "×"),
                fmt(ratio(s["onnxcam"], s["pgc"]), 1, "×"),
            )
        if i + 1 == len(configs) or configs[i + 1][0] != arch:
            lab.forget(arch)
    return table, results


BREAKDOWN_PARTS = ("session run", "of which plain forward", "CAM math", "ReLU+normalise+resize", "fuse", "other")


def breakdown(lab: Lab, arch: str, layers: tuple[str, ...], x: np.ndarray) -> tuple[float, dict[str, float]]:
    """Milliseconds of ``explain_arrays`` on ``x`` and of its parts, each timed alone on the same data."""
    from onnxcam.explainer import Explainer
    from onnxcam.methods import get_method
    from onnxcam.postprocess import fuse, layer_map

    explainer = Explainer(lab.explainer(arch, layers), provider="cpu", threads=lab.cfg.threads)
    session = lab.ort_session(arch, "cpu")
    name = session.get_inputs()[0].name
    targets = explainer.targets(None, len(x))
    size = (x.shape[3], x.shape[2])
    method = get_method("gradcam")
    out = explainer.run(x, targets)

    def cams() -> dict[str, np.ndarray]:
        return {
            la: method(out.activations[la], out.gradients[la], eigen_smooth=False, head_weights=None) for la in layers
        }

    raw = cams()
    maps = [layer_map(raw[layer], size) for layer in layers]

    def ms(fn: Callable[[], object]) -> float:
        return 1000 * median_seconds(fn, lab.cfg.warmup, lab.cfg.runs)

    total = ms(lambda: explainer.explain_arrays(x, methods=["gradcam"]))
    parts = {
        "session run": ms(lambda: explainer.run(x, targets)),
        "of which plain forward": ms(lambda: session.run(None, {name: x})),
        "CAM math": ms(cams),
        "ReLU+normalise+resize": ms(lambda: [layer_map(raw[layer], size) for layer in layers]),
        "fuse": ms(lambda: fuse(maps)),
    }
    parts["other"] = total - sum(v for k, v in parts.items() if k != "of which plain forward")
    return total, parts


def breakdown_table(lab: Lab) -> Table:
    """Where ``explain_arrays`` spends its time at the largest batch: session run, CAM math, resize, the rest."""
    batch = lab.cfg.big
    table = Table(
        f"Where onnxcam's time goes (Grad-CAM, batch {batch}, CPU)",
        ["model", "explain_arrays", *BREAKDOWN_PARTS],
        note="Milliseconds per batch (share of explain_arrays), each part timed alone. *Of which plain forward*: "
        "the ORT forward of the original model; the rest of the session run is the taps and the backward. "
        "*Other*: softmax, top-k, result objects.",
    )
    x = inputs(batch)
    for arch, layers in lab.cfg.models:
        result = attempt(f"breakdown {arch}", lambda arch=arch, layers=layers: breakdown(lab, arch, layers, x))
        lab.forget(arch)
        if result is None:
            continue
        total, parts = result
        table.add(arch, f"{total:.1f}", *(f"{parts[k]:.1f} ({100 * parts[k] / total:.0f}%)" for k in BREAKDOWN_PARTS))
    return table


# --------------------------------------------------------------------------------------------- processes, memory


def test_image(path: Path) -> Path:
    """A 640×480 colour PNG with smooth structure (what a photo decodes to, size-wise)."""
    import cv2

    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    rgb = np.stack([xx / 640, yy / 480, 0.5 + 0.5 * np.sin(xx / 40) * np.cos(yy / 30)], axis=-1)
    cv2.imwrite(str(path), (255 * rgb).astype(np.uint8))
    return path


def onnxcam_command() -> list[str]:
    script = Path(sys.executable).with_name("onnxcam")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnxcam"]


def median_subprocess(what: str, make_cmd: Callable[[int], list[str]], runs: int, check: Callable[[int], bool]) -> dict:
    """Median and min wall time of ``runs`` fresh processes after one untimed warm-up (page cache, ``.pyc``)."""

    def measure() -> float:
        timed_subprocess(make_cmd(-1))
        times = []
        for i in range(runs):
            times.append(timed_subprocess(make_cmd(i)))
            if not check(i):
                raise RuntimeError(f"{what}: run {i} wrote no PNG")
        return times

    times = attempt(what, measure)
    return {"median": statistics.median(times), "min": min(times)} if times else {"median": None, "min": None}


def cold_start_table(lab: Lab) -> tuple[Table, dict]:
    """Fresh process: explain one PNG to an overlay PNG with the onnxcam CLI and with a pytorch-grad-cam script."""
    cfg = lab.cfg
    arch, layers = COLD_MODEL
    image = test_image(lab.workdir / "cold.png")
    model = lab.explainer(arch, layers)
    weights = lab.weights(arch)
    script = lab.workdir / "pgc_cold.py"
    script.write_text(PGC_SCRIPT)
    out = lab.workdir / "cold-out"

    def onnxcam_cmd(i: int) -> list[str]:
        return [
            *onnxcam_command(),
            "explain",
            str(model),
            str(image),
            "--out",
            str(out / f"onnxcam{i}"),
            "-q",
            "--provider",
            "cpu",
            "--threads",
            str(cfg.threads),
        ]

    def pgc_cmd(i: int) -> list[str]:
        png = out / f"pgc{i}.png"
        out.mkdir(parents=True, exist_ok=True)
        return [sys.executable, str(script), arch, layers[0], str(weights), str(image), str(png), str(cfg.threads)]

    table = Table(
        f"Cold start: one image to an overlay PNG in a fresh process ({arch}, CPU)",
        ["command", "median s", "min s", "runs"],
        note="Wall time from spawn to exit (interpreter start, imports, model load, decode, Grad-CAM, PNG write); "
        "one untimed warm-up run first.",
    )
    rows = {
        "python -c pass": median_subprocess(
            "python", lambda i: [sys.executable, "-c", "pass"], cfg.subprocess_runs, lambda i: True
        ),
        "onnxcam explain (CLI)": median_subprocess(
            "onnxcam CLI", onnxcam_cmd, cfg.subprocess_runs, lambda i: any((out / f"onnxcam{i}").glob("*.png"))
        ),
        "pytorch-grad-cam script": median_subprocess(
            "pytorch-grad-cam script", pgc_cmd, cfg.subprocess_runs, lambda i: (out / f"pgc{i}.png").is_file()
        ),
    }
    for name, r in rows.items():
        table.add(name, fmt(r["median"], 2), fmt(r["min"], 2), cfg.subprocess_runs)
    return table, rows


IMPORTS = (
    ("onnxcam", "import onnxcam"),
    ("onnxcam.explainer", "import onnxcam.explainer (the Python API: onnxruntime, numpy, OpenCV)"),
    ("onnxcam.cli.explain_cmd", "import onnxcam.cli.explain_cmd (what `onnxcam explain` loads)"),
    ("torch,torchvision,pytorch_grad_cam", "import torch, torchvision, pytorch_grad_cam"),
)


def import_table(cfg: Config) -> tuple[Table, dict]:
    table = Table(
        "Import time in a fresh process",
        ["import", "median s", "torch loaded"],
        note="`time.perf_counter()` around the import statement(s) only (interpreter start excluded); "
        "one untimed warm-up process first.",
    )
    results = {}
    for modules, label in IMPORTS:
        code = (
            "import sys, time; t = time.perf_counter()\n"
            + "".join(f"import {m}\n" for m in modules.split(","))
            + "print(time.perf_counter() - t, 'torch' in sys.modules)"
        )

        def measure(code: str = code) -> tuple[float, bool]:
            subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
            outs = [
                subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
                for _ in range(cfg.subprocess_runs)
            ]
            return statistics.median(float(o[0]) for o in outs), outs[0][1] == "True"

        seconds, torch_loaded = attempt(label, measure) or (None, None)
        results[modules] = seconds
        table.add(label, fmt(seconds, 3), {True: "yes", False: "no", None: "—"}[torch_loaded])
    return table, results


def peak_memory_table(lab: Lab) -> tuple[Table, dict]:
    """Peak RSS of a fresh process doing each job on one batch (3 repeats; torch stays out of the onnxcam ones)."""
    cfg, arch, batch = lab.cfg, lab.cfg.resnet, lab.cfg.big
    common = {"batch": batch, "threads": cfg.threads, "repeats": 3}
    jobs = {
        "onnxcam Grad-CAM (explain_arrays)": ("peak_onnxcam", {"model": str(lab.explainer(arch, ("layer4",)))}),
        "onnxruntime forward (plain model)": ("peak_ort", {"model": str(lab.plain(arch))}),
        "pytorch-grad-cam GradCAM": ("peak_gradcam", {"arch": arch, "layers": ["layer4"]}),
        "torch eager forward (no_grad)": ("peak_torch", {"arch": arch}),
    }
    table = Table(
        f"Peak memory ({arch} layer4, batch {batch}, CPU)",
        ["process", "peak RSS MB", "vs onnxcam"],
        note="Peak RSS (`VmHWM`) of a fresh process that imports its stack, builds or loads the model and runs the job "
        "3 times (`ru_maxrss` would carry over the benchmark's own peak through fork + exec).",
    )
    peaks = {}
    for label, (task, kwargs) in jobs.items():
        result = attempt(label, lambda task=task, kwargs=kwargs: run_worker(task, **kwargs, **common))
        peaks[label] = result["peak_mb"] if result else None
    base = peaks["onnxcam Grad-CAM (explain_arrays)"]
    for label, peak in peaks.items():
        table.add(label, fmt(peak, 0), fmt(ratio(peak, base), 2, "×"))
    return table, peaks


def footprint_table() -> Table:
    table = Table(
        "Install footprint",
        ["environment", "distributions", "size on disk MB", "largest"],
        note="Sum of the files each installed distribution records (importlib.metadata), over the requirement "
        "closure of the roots on this platform; shared requirements (numpy, …) count in both.",
    )
    envs = {
        "runtime: onnxcam (onnxruntime, numpy, opencv-python-headless, click)": RUNTIME,
        "torch stack: torch, torchvision, grad-cam": TORCH_STACK,
    }
    for label, roots in envs.items():
        fp = footprint(roots, {"onnxcam": [REPO / "onnxcam", REPO / "export"]})
        largest = ", ".join(f"{name} {mb:.0f}" for name, mb in fp.largest())
        missing = f" (not installed: {', '.join(fp.missing)})" if fp.missing else ""
        table.add(label, len(fp.sizes), f"{fp.total_mb:.0f}", largest + missing)
    return table


def flat_memory_table(lab: Lab) -> tuple[Table, float | None]:
    cfg, arch, batch = lab.cfg, lab.cfg.resnet, lab.cfg.big
    result = attempt(
        "memory flat",
        lambda: run_worker(
            "flat",
            model=str(lab.explainer(arch, ("layer4",))),
            batch=batch,
            threads=cfg.threads,
            warmup=10,
            batches=cfg.flat_batches,
            samples=10,
        ),
    )
    table = Table(
        f"Memory over a long run ({arch} layer4, {cfg.flat_batches} batches of {batch}, one process)",
        ["images", "RSS after warm-up MB", "RSS at half MB", "RSS at end MB", "growth MB", "images/s"],
        note="Current RSS (`/proc/self/statm`) after 10 warm-up batches of `Explainer.explain_arrays`, then sampled.",
    )
    if not result:
        table.add("—", "—", "—", "—", "—", "—")
        return table, None
    trace = result["trace"]
    start, end = trace[0][1], trace[-1][1]
    mid = min(trace, key=lambda t: abs(t[0] - cfg.flat_batches / 2))[1]
    growth = end - start
    table.add(
        result["images"],
        f"{start:.0f}",
        f"{mid:.0f}",
        f"{end:.0f}",
        f"{growth:+.1f}",
        fmt(result["images"] / result["seconds"]),
    )
    table.note += " Trace (batch: MB): " + ", ".join(f"{i}: {mb:.0f}" for i, mb in trace) + "."
    return table, growth


# ---------------------------------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    found = {}
    for name in (
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "torchvision",
        "numpy",
        "opencv-python-headless",
        "grad-cam",
        "onnx",
        "onnxcam",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def machine(cfg: Config) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line), "0")
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    busy = (
        [
            f"- **Warning: the machine was busy** (load average {load:.2f} before the run). On shared cores torch's "
            "OpenMP threads spin-wait for each other (seen: 50× slower), so the torch columns are unreliable; "
            "rerun on a quiet machine."
        ]
        if load > 0.25 * cores
        else []
    )
    return [
        *busy,
        f"- CPU: {cpu}; {os.cpu_count()} logical cores ({cores} usable); "
        f"{int(mem) / 2**20:.0f} GiB RAM; load average before the run {load:.2f}",
        f"- {platform.platform()}; Python {platform.python_version()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- Threads: onnxruntime {cfg.threads} intra-op (1 inter-op), `torch.set_num_threads({cfg.threads})`",
    ]


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def targets_table(cfg: Config, main: dict, cold: dict, imports: dict, growth: float | None) -> Table:
    table = Table("Targets", ["target", "measured", "verdict"])
    b = cfg.big

    def speed_target(label: str, key: str, limit: float, models: Sequence[str], digits: int) -> None:
        measured = {
            m: ratio(main[(m, ly, b)]["onnxcam"], main[(m, ly, b)][key])
            for m, ly in cfg.models
            if m in models and (m, ly, b) in main
        }
        values = [v for v in measured.values() if v is not None]
        met = all(v >= limit for v in values) if values and len(values) == len(measured) else None
        text = ", ".join(f"{m} {fmt(v, digits, '×')}" for m, v in measured.items()) or "—"
        table.add(label, text, verdict(met))

    all_models = [m for m, _ in MAIN_MODELS]
    speed_target(f"last-layer Grad-CAM ≥ 0.9× plain ORT forward (CPU, batch {b})", "ort", 0.9, all_models, 2)
    speed_target(f"≥ 4× pytorch-grad-cam on resnet50 (CPU, batch {b})", "pgc", 4, ["resnet50"], 1)
    speed_target(f"≥ 10× pytorch-grad-cam on mobilenet_v3_large (CPU, batch {b})", "pgc", 10, ["mobilenet_v3_large"], 1)
    cold_s = cold["onnxcam explain (CLI)"]["median"]
    table.add(
        f"cold start ≤ 1 s ({COLD_MODEL[0]})", fmt(cold_s, 2, " s"), verdict(None if cold_s is None else cold_s <= 1)
    )
    imports_s = {m: imports.get(m) for m in ("onnxcam", "onnxcam.explainer")}
    worst = None if None in imports_s.values() else max(imports_s.values())
    table.add(
        "import onnxcam ≤ 0.3 s (judged on the slower of `onnxcam` and the API `onnxcam.explainer`)",
        "; ".join(f"{m} {fmt(v, 3, ' s')}" for m, v in imports_s.items()),
        verdict(None if worst is None else worst <= 0.3),
    )
    table.add(
        f"memory flat (growth ≤ {FLAT_LIMIT_MB:.0f} MB over {cfg.flat_batches} batches of {b})",
        fmt(growth, 1, " MB"),
        verdict(None if growth is None else growth <= FLAT_LIMIT_MB),
    )
    return table


def report(cfg: Config, command: str, host: list[str], sections: list[Table | str], targets: Table) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# onnxcam benchmarks",
        "",
        f"Written by `{command}` on {now}. Benchmarks never assert timings; rerun to compare.",
    ]
    if cfg.quick:
        head += ["", "**Quick run** (tiny settings, proves the script works): these numbers mean nothing."]
    method = [
        "## Method",
        "",
        "- Random-init torchvision weights (`torch.manual_seed(0)`), input 224×224, the same seeded standard-normal "
        "batch for every contender, CPU unless a section says CUDA.",
        f"- Each cell: median of {cfg.runs} timed runs after {cfg.warmup} warm-up run(s); images/s = batch / median.",
        f"- Exports: `{cfg.exporter}` exporter for both the plain forward (no taps) and the explainer graph, "
        "onnxruntime `ORT_ENABLE_ALL`, same session options; explainer verification skipped (the test suite checks "
        "the gradients).",
        "- Contenders: **ORT forward** = onnxruntime on the plain exported model; **onnxcam Grad-CAM** = "
        "`Explainer.explain_arrays(x, methods=['gradcam'])` from preprocessed arrays to final [0, 1] maps at 224²; "
        "**explainer graph** = `Explainer.run` alone; **pytorch-grad-cam** = `GradCAM(model, target_layers)(x, "
        "targets=None)`; **torch eager** = `model(x)` under `torch.no_grad()`.",
    ]
    parts = [
        *head,
        "",
        "## Machine",
        "",
        *host,
        "",
        *method,
        "",
        "## Targets",
        "",
        targets.markdown(heading=False),
        "## Results",
        "",
    ]
    for section in sections:
        parts.append(section.markdown() if isinstance(section, Table) else section)
    parts += [
        "## Reproduce",
        "",
        "From the repository root, in an environment with the export and dev extras "
        "(`pip install -e '.[export,dev]'`: torch, torchvision, onnx, grad-cam), on a quiet machine:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (batch 1/2, 2 runs, one model)")
    parser.add_argument("--out", type=Path, help="markdown report (default: BENCHMARKS.md; /tmp with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for onnxruntime and torch")
    parser.add_argument("--runs", type=int, default=0, help="timed runs per cell (default 7; 2 with --quick)")
    parser.add_argument("--flat-batches", type=int, default=250, help="batches of the long memory run")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument(
        "--only-vit", action="store_true", help="measure only the vision-transformer row and replace that section"
    )
    parser.add_argument(
        "--only-methods",
        action="store_true",
        help="measure only the perturbation/input-gradient methods and replace that section of --out",
    )
    parser.add_argument(
        "--only-cuda",
        action="store_true",
        help="measure only the CUDA throughput (onnxruntime CUDA provider vs torch on the same GPU) and replace the "
        "CUDA section of --out",
    )
    return parser.parse_args(argv)


def methods_section(lab: Lab) -> Table:
    """The perturbation and input-gradient methods on ResNet-50 (an explainer graph with all input gradients)."""
    from methods import ARCH, LAYER

    from onnxcam.contract import RELU_RULES

    path = lab.explainer(ARCH, (LAYER,), RELU_RULES)
    table = methods_table(lab.model(ARCH), str(path), lab.cfg.threads, log)
    lab.forget(ARCH)
    return table


def cuda_section(lab: Lab, host: list[str]) -> Table:
    """The throughput table on the GPU: onnxruntime's CUDA provider (forward, onnxcam, explainer graph) against
    pytorch-grad-cam and torch eager on the same GPU; titled ``CUDA`` so it replaces that section."""
    import torch

    torch.backends.cudnn.allow_tf32 = False  # float32 on both sides: onnxcam runs CUDA with TF32 off
    torch.backends.cuda.matmul.allow_tf32 = False
    table = throughput_table(lab, "CUDA", lab.cfg.models, "cuda")[0]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
    hosted = "; ".join(line.lstrip("- ") for line in host)
    table.note += f" GPU: {gpu}; float32 everywhere (TF32 off in onnxruntime and torch). Host of this run: {hosted}"
    return table


def replace_section(text: str, section: Table) -> str:
    """``text`` with the markdown section titled like ``section`` replaced (or added before the CUDA section)."""
    heading = f"### {section.title}"
    new = section.markdown()
    if heading in text:
        start = text.index(heading)
        end = text.find("\n### ", start + len(heading))
        end = text.find("\n## ", start + len(heading)) if end < 0 else end
        if end < 0:  # the last section of the file
            return text[:start] + new
        return text[:start] + new.rstrip("\n") + "\n\n" + text[end + 1 :]
    return text.replace("### CUDA", new + "\n### CUDA", 1)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = Config.from_args(args)
    official = (REPO / "BENCHMARKS.md").resolve()
    out = args.out or (Path(tempfile.gettempdir()) / "onnxcam-bench-quick.md" if cfg.quick else official)
    if cfg.quick and out.resolve() == official:
        sys.exit("a --quick run must not overwrite BENCHMARKS.md; pass --out /tmp/…")
    command = "python bench/bench.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))

    host = machine(cfg)  # before the run: the load average says whether others share the cores
    import torch

    if args.only_vit:
        torch.set_num_threads(cfg.threads)
        table = vit_table(cfg.threads, args.runs or 3, (1,), log)
        out.write_text(replace_section(out.read_text(encoding="utf-8"), table), encoding="utf-8")
        log(f"updated the vision-transformer section of {out}")
        return
    if args.only_methods:
        torch.set_num_threads(cfg.threads)
        with tempfile.TemporaryDirectory(prefix="onnxcam-bench-") as tmp:
            table = methods_section(Lab(cfg, Path(tmp)))
        out.write_text(replace_section(out.read_text(encoding="utf-8"), table), encoding="utf-8")
        log(f"updated the methods section of {out}")
        return

    torch.set_num_threads(cfg.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    from onnxcam.providers import cuda_available

    if args.only_cuda:
        if not cuda_available():
            sys.exit("--only-cuda: onnxruntime has no usable CUDA execution provider here")
        with tempfile.TemporaryDirectory(prefix="onnxcam-bench-") as tmp:
            table = cuda_section(Lab(cfg, Path(tmp)), host)
        out.write_text(replace_section(out.read_text(encoding="utf-8"), table), encoding="utf-8")
        log(f"updated the CUDA section of {out}")
        return

    with tempfile.TemporaryDirectory(prefix="onnxcam-bench-") as tmp:
        lab = Lab(cfg, Path(tmp))
        sections: list[Table | str] = []
        log("== throughput, last layer (CPU)")
        main_table, main = throughput_table(lab, "Throughput, last conv block (CPU)", cfg.models, "cpu")
        sections.append(main_table)
        log("== mid-network layer and 3-layer fusion (CPU)")
        deep = [(cfg.resnet, ("layer2",)), (cfg.resnet, ("layer2", "layer3", "layer4"))]
        sections.append(
            throughput_table(lab, "Longer backward: mid-network layer and 3-layer fusion (CPU)", deep, "cpu")[0]
        )
        log("== breakdown")
        sections.append(breakdown_table(lab))
        log("== cold start")
        cold_table, cold = cold_start_table(lab)
        sections.append(cold_table)
        log("== import time")
        imports_table, imports = import_table(cfg)
        sections.append(imports_table)
        log("== peak memory")
        sections.append(peak_memory_table(lab)[0])
        log("== install footprint")
        sections.append(footprint_table())
        log("== memory over a long run")
        flat_table, growth = flat_memory_table(lab)
        sections.append(flat_table)
        log("== vision transformer")
        sections.append(attempt("vit", lambda: vit_table(cfg.threads, 3, (1,), log)) or "")
        log("== perturbation and input-gradient methods")
        sections.append(attempt("methods", lambda: methods_section(lab)) or "")
        log("== CUDA")
        if cuda_available():
            sections.append(cuda_section(lab, host))
        else:
            log("  skipped (no CUDA)")
            sections.append("### CUDA\n\nskipped (no CUDA): onnxruntime has no CUDA execution provider here.\n")
        targets = targets_table(cfg, main, cold, imports, growth)
    text = report(cfg, command, host, sections, targets)
    print(text)
    out.write_text(text, encoding="utf-8")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
