"""Kill-and-resume: ``onnxcam explain`` killed with SIGKILL at several moments, then resumed, ends exactly like an
uninterrupted run (one ok line per input, every artefact whole, no temporary file)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from small_models import export_gapnet

from onnxcam.batch import RESULTS_FILE, BatchOptions, run_batch
from onnxcam.outputs import json_line, temp_path

IMAGES = 60
METHODS = ("gradcam", "layercam")
OPTIONS = BatchOptions(methods=METHODS, save=("overlay", "npy", "grid"), batch_size=4)
CLI_OPTIONS = ("--method", ",".join(METHODS), "--save", "overlay,npy,grid", "--batch-size", "4", "--quiet")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("model") / "gap.onnx", layers=("body.1", "body.3"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 smooth random colour images of a few sizes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for i in range(IMAGES):
        height, width = (120, 160) if i % 2 else (150, 110)
        noise = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
        cv2.imwrite(str(folder / f"im{i:02d}.png"), cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC))
    return folder


@pytest.fixture(scope="module")
def reference(model: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_batch(model, [images], out, OPTIONS, provider="cpu")
    assert summary.ok == IMAGES
    return out


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def valid_records(out: Path, name: str = RESULTS_FILE) -> list[dict]:
    records = []
    for text in (out / name).read_text().splitlines():
        try:
            records.append(json.loads(text))
        except ValueError:
            continue  # a line cut by the kill
    return records


def artefacts(record: dict) -> list[str]:
    files = [record["grid"]] + [entry[kind] for entry in record["methods"].values() for kind in ("overlay", "npy")]
    return [f for f in files if f is not None]


def run_until_killed(model: Path, images: Path, out: Path, resume: bool, lines: int, delay: float) -> bool:
    """Start the CLI; SIGKILL it once the results file holds ``lines`` lines or ``delay`` seconds have passed,
    whichever comes first; whether the kill landed on a running job."""
    command = [sys.executable, "-m", "onnxcam", "explain", str(model), str(images), "--out", str(out), *CLI_OPTIONS]
    process = subprocess.Popen([*command, *(["--resume"] if resume else [])], stderr=subprocess.DEVNULL)
    began = time.monotonic()
    while process.poll() is None:
        if line_count(out / RESULTS_FILE) >= lines or time.monotonic() - began >= delay:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait() == -signal.SIGKILL


def assert_lines_mean_finished_work(out: Path) -> None:
    """After a kill: every complete ok line's artefacts are in place and not empty."""
    for record in valid_records(out):
        assert record["status"] == "ok"
        for name in artefacts(record):
            assert (out / name).stat().st_size > 0, name


def assert_same_as_reference(out: Path, reference: Path) -> None:
    want = {r["input"]: r for r in valid_records(reference)}
    got = valid_records(out)
    assert sorted(r["input"] for r in got) == sorted(want)  # exactly one line per input
    expected_files = {RESULTS_FILE}
    for record in got:
        ref = want[record["input"]]
        assert record["status"] == "ok" and record["name"] == ref["name"]
        assert record["class_index"] == ref["class_index"]
        assert record["probability"] == pytest.approx(ref["probability"], abs=1e-6)
        for method in METHODS:
            for key, value in record["methods"][method]["stats"].items():
                assert value == pytest.approx(ref["methods"][method]["stats"][key], abs=1e-6)
            cam = np.load(out / record["methods"][method]["npy"])
            np.testing.assert_allclose(cam, np.load(reference / ref["methods"][method]["npy"]), atol=1e-6)
            png = cv2.imread(str(out / record["methods"][method]["overlay"]))
            want_png = cv2.imread(str(reference / ref["methods"][method]["overlay"]))
            assert png is not None and np.abs(png.astype(int) - want_png).max() <= 1  # maps within 1e-6
        assert cv2.imread(str(out / record["grid"])) is not None
        expected_files |= set(artefacts(record))
    assert {p.name for p in out.iterdir()} == expected_files  # no temporary, hidden or stray file


def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(
    model: Path, images: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # Kill points are counted in result lines, not seconds, so that they land on any machine speed (the whole job
    # takes about one second): at start-up (before the first line), mid-batch, while a resumed run starts up (reading
    # and repairing the results file), and near the end. (lines the results file holds at the kill, seconds at most)
    moments = [(1, 0.3), (9, math.inf), (IMAGES, 0.3), (27, math.inf), (IMAGES - 8, math.inf)]
    landed = 0
    for attempt, (lines, delay) in enumerate(moments):
        landed += run_until_killed(model, images, out, attempt > 0, lines, delay)
        if (out / RESULTS_FILE).exists():
            assert_lines_mean_finished_work(out)
    assert landed == len(moments), f"only {landed} of {len(moments)} kills hit a running job"
    final = subprocess.run(
        [sys.executable, "-m", "onnxcam", "explain", str(model), str(images), "--out", str(out), *CLI_OPTIONS,
         "--resume"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert_same_as_reference(out, reference)


def test_resume_repairs_what_a_kill_leaves_behind(model: Path, images: Path, reference: Path, tmp_path: Path) -> None:
    """The states a kill can leave, made on purpose: a cut last line, temporary files (of the log and of artefacts),
    artefacts without a line, an ok line whose artefact is empty, an old duplicate line."""
    out = tmp_path / "out"
    run_batch(model, [images], out, OPTIONS, provider="cpu")
    records = valid_records(out)
    kept, rest = records[:30], records[30:]
    cut = json_line(rest[0])[:57]
    duplicate = {**kept[3], "status": "error", "error": "an older run"}
    text = "".join(json_line(r) for r in [duplicate, *kept]) + cut
    (out / RESULTS_FILE).write_text(text)  # lines of rest[1:] lost; their artefacts stay (orphans)
    (out / kept[5]["methods"]["gradcam"]["npy"]).write_bytes(b"")  # cut by a crash: must be redone
    stale = [temp_path(out / RESULTS_FILE), temp_path(out / rest[2]["grid"]), temp_path(out / kept[0]["grid"])]
    for path in stale:
        path.write_bytes(b"half")
    foreign = temp_path(out / "someone-else.png")  # a temporary file of another job sharing the directory
    foreign.write_bytes(b"")

    seen: list[tuple[dict, bool]] = []
    summary = run_batch(
        model, [images], out, replace(OPTIONS, resume=True), provider="cpu",
        on_result=lambda record, skipped: seen.append((record, skipped)),
    )  # fmt: skip
    skipped = {r["input"] for r, was_skipped in seen if was_skipped}
    assert skipped == {r["input"] for r in kept} - {kept[5]["input"]}
    assert (summary.total, summary.skipped, summary.ok) == (IMAGES, 29, 31)
    assert not any(path.exists() for path in stale) and foreign.exists()
    foreign.unlink()
    lines = (out / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == IMAGES and all(json.loads(line) for line in lines)  # the cut line is gone, no duplicate
    assert_same_as_reference(out, reference)
