"""The Ray Data engine: the same records, error lines and artefacts as the local engine; Ray imported only when used."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from small_models import export_gapnet

from onnxcam.batch import RESULTS_FILE, BatchOptions, run_batch
from onnxcam.cli import main

OPTIONS = BatchOptions(methods=("gradcam", "layercam"), save=("overlay", "npy", "grid"), batch_size=3, topk=3)


def records(out: Path) -> dict[str, dict]:
    """The records of ``out`` by input, without their timings."""
    lines = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert len(lines) == len({r["input"] for r in lines})
    return {r["input"]: {k: v for k, v in r.items() if k != "timings_ms"} for r in lines}


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[float]:
    """A local Ray instance on 2 CPUs with a small object store; yields its start-up time in seconds."""
    ray = pytest.importorskip("ray")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield time.perf_counter() - started
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("model") / "gap.onnx", layers=("body.1", "body.3"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven images of different sizes, a broken file and a missing one."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(7):
        path = folder / f"im{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), np.uint8))
        paths.append(path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return [*paths, folder / "broken.jpg", folder / "missing.png"]


@pytest.mark.slow  # Ray start-up and actors: ~15–35 s on 2 busy cores
def test_ray_engine_matches_the_local_engine(
    ray_instance: float, model: Path, inputs: list[Path], tmp_path: Path
) -> None:
    from onnxcam.ray_engine import explain_dataset

    started = time.perf_counter()
    local = run_batch(model, inputs, tmp_path / "local", OPTIONS, provider="cpu", threads=1)
    local_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = explain_dataset(model, inputs, tmp_path / "ray", OPTIONS, num_actors=2, parquet=True)
    ray_s = time.perf_counter() - started
    print(f"ray start-up {ray_instance:.1f} s; run: ray {ray_s:.1f} s, local {local_s:.1f} s")
    assert (summary.total, summary.ok, summary.errors) == (local.total, local.ok, local.errors) == (9, 7, 2)

    want, got = records(tmp_path / "local"), records(tmp_path / "ray")
    assert got.keys() == want.keys() == {str(p) for p in inputs}
    for key, ref in want.items():
        record = got[key]
        assert (record["status"], record["error"], record["name"]) == (ref["status"], ref["error"], ref["name"])
        if ref["status"] == "error":
            assert record == ref  # the same error line
            continue
        assert record["class_index"] == ref["class_index"] and record["topk"][0]["index"] == ref["topk"][0]["index"]
        assert record["probability"] == pytest.approx(ref["probability"], abs=1e-6)
        assert record["image_size"] == ref["image_size"] and record["grid"] == ref["grid"]
        for method, entry in ref["methods"].items():
            mine = record["methods"][method]
            assert (mine["overlay"], mine["npy"]) == (entry["overlay"], entry["npy"])
            for stat, value in entry["stats"].items():
                assert mine["stats"][stat] == pytest.approx(value, abs=1e-6)
            cam = np.load(tmp_path / "ray" / mine["npy"])
            np.testing.assert_allclose(cam, np.load(tmp_path / "local" / entry["npy"]), atol=1e-6)
            png, ref_png = (cv2.imread(str(tmp_path / d / entry["overlay"])) for d in ("ray", "local"))
            assert np.abs(png.astype(int) - ref_png).max() <= 1
    assert {p.name for p in (tmp_path / "ray").iterdir()} == {p.name for p in (tmp_path / "local").iterdir()} | {
        "results.parquet"
    }

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ray" / "results.parquet").to_pylist()
    assert {(r["input"], r["status"], r["probability"]) for r in table} == {
        (r["input"], r["status"], r["probability"]) for r in got.values()
    }

    started = time.perf_counter()
    result = CliRunner().invoke(
        main,
        ["explain", str(model), *map(str, inputs), "--out", str(tmp_path / "ray"), "--engine", "ray", "--resume",
         "--method", "gradcam,layercam", "--save", "overlay,npy,grid", "--batch-size", "3", "--topk", "3"],
        catch_exceptions=False,
    )  # fmt: skip
    print(f"CLI resume on ray: {time.perf_counter() - started:.1f} s")
    assert result.exit_code == 1, result.output  # the two bad inputs fail again
    assert "0 ok, 2 failed, 7 skipped of 9 inputs" in result.stderr
    assert records(tmp_path / "ray") == got


def test_ray_is_imported_only_by_the_ray_engine(model: Path, inputs: list[Path], tmp_path: Path) -> None:
    code = "import sys, onnxcam, onnxcam.batch, onnxcam.cli.explain_cmd; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    no_ray = "import sys; sys.modules['ray'] = None; from onnxcam.cli import main; main()"
    args = ["explain", str(model), str(inputs[0]), "--out", str(tmp_path / "out"), "--engine", "ray"]
    done = subprocess.run([sys.executable, "-c", no_ray, *args], capture_output=True, text=True)
    assert done.returncode == 2 and "pip install 'onnxcam[ray]'" in done.stderr
    assert not (tmp_path / "out").exists()
