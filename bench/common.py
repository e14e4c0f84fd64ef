"""Helpers shared by the benchmark and its subprocess workers: timing, memory, subprocess JSON, markdown tables."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKERS = HERE / "workers.py"


def median_seconds(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Median wall time of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def current_rss_mb() -> float:
    """Resident set size of this process now (``/proc/self/statm``), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``VmHWM``), in MB.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork`` + ``exec`` into it, so every
    worker spawned by a big benchmark process would report the benchmark's own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(task: str, **kwargs: object) -> dict:
    """Run ``workers.py TASK JSON`` in a fresh interpreter; return the JSON object it prints last."""
    proc = subprocess.run(
        [sys.executable, str(WORKERS), task, json.dumps(kwargs)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"worker {task} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_subprocess(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one subprocess from spawn to exit; raises with its last stderr line when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {tail[0]}")
    return elapsed


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number for a table cell; ``—`` when missing."""
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass
class Table:
    """A markdown table filled row by row; each row is echoed to stderr as it arrives (progress)."""

    title: str
    headers: list[str]
    note: str = ""
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        row = [str(c) for c in cells]
        self.rows.append(row)
        print(f"  [{self.title}] " + " | ".join(row), file=sys.stderr, flush=True)

    def markdown(self, heading: bool = True) -> str:
        lines = [f"### {self.title}", ""] if heading else []
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"
