"""``--shard I/N``: a stable split of the inputs by a hash of each path; N shards cover every input exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from small_models import export_gapnet

from onnxcam.batch import BatchOptions, results_name, run_batch
from onnxcam.cli import main
from onnxcam.inputs import InputItem, Shard, expand_inputs, parse_shard, select_shard, shard_of

PATHS = [f"data/{folder}/img_{i:03d}.jpg" for folder in ("a", "b", "c") for i in range(70)] + ["café/ü.png", "x y.png"]


def test_parse_shard() -> None:
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard(" 3 / 4 ") == Shard(3, 4)
    assert str(parse_shard("2/5")) == "2/5"
    for bad in ["4/4", "0/0", "-1/4", "1", "a/b", "1/2/3", "", "1.0/2", "٣/٤"]:
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_partition_the_inputs_whatever_their_order() -> None:
    items = [InputItem(Path(p)) for p in PATHS]
    for count in (1, 2, 3, 7):
        parts = [select_shard(items, Shard(i, count)) for i in range(count)]
        names = [{str(item.path) for item in part} for part in parts]
        assert sum(len(n) for n in names) == len(PATHS) and set().union(*names) == set(PATHS)  # disjoint, complete
        reversed_parts = [select_shard(items[::-1], Shard(i, count)) for i in range(count)]
        assert [{str(item.path) for item in part} for part in reversed_parts] == names
        assert all(part == [i for i in items if i in part] for part in parts)  # input order kept
    sizes = [len(select_shard(items, Shard(i, 3))) for i in range(3)]
    assert min(sizes) > len(PATHS) / 3 * 0.7  # a hash split, not everything in one shard


def test_shard_is_sha256_of_the_posix_path_and_independent_of_the_hash_seed() -> None:
    def reference(path: str, count: int) -> int:
        return int(hashlib.sha256(path.encode()).hexdigest()[:16], 16) % count

    assert [shard_of(p, 5) for p in PATHS] == [reference(p, 5) for p in PATHS]
    assert shard_of("./data/a/img_000.jpg", 5) == shard_of("data/a/img_000.jpg", 5)  # pathlib spelling
    code = "import sys; from onnxcam.inputs import shard_of; print([shard_of(p, 5) for p in sys.argv[1:]])"
    for seed in ("0", "123"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code, *PATHS], capture_output=True, text=True, env=env, check=True)
        assert json.loads(done.stdout) == [shard_of(p, 5) for p in PATHS]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("model") / "gap.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(20):
        cv2.imwrite(str(folder / f"im{i:02d}.png"), rng.integers(0, 256, (24, 30, 3), np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_shards_sharing_an_output_directory_explain_every_input_once(model: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    everything = {str(item.path) for item in expand_inputs([folder])}
    lines: dict[int, list[dict]] = {}
    for index in (2, 0, 1):
        shard = Shard(index, 3)
        summary = run_batch(model, [folder], out, BatchOptions(shard=shard), provider="cpu")
        lines[index] = [json.loads(line) for line in (out / results_name(shard)).read_text().splitlines()]
        assert summary.results.name == f"results.{index}-of-3.jsonl" and summary.total == len(lines[index])
    inputs = [{r["input"] for r in part} for part in lines.values()]
    assert sum(map(len, inputs)) == len(everything) and set().union(*inputs) == everything  # disjoint, complete
    assert not (out / "results.jsonl").exists()
    again = run_batch(model, [folder], out, BatchOptions(shard=Shard(1, 3), resume=True), provider="cpu")
    assert again.skipped == sum(r["status"] == "ok" for r in lines[1])  # each shard resumes from its own log
    files = sorted(folder.iterdir(), reverse=True)  # the same inputs listed another way: the same split
    summary = run_batch(model, files, tmp_path / "other", BatchOptions(shard=Shard(0, 3)), provider="cpu")
    other = (tmp_path / "other" / "results.0-of-3.jsonl").read_text().splitlines()
    assert summary.total == len(lines[0]) and {json.loads(line)["input"] for line in other} == {
        r["input"] for r in lines[0]
    }


def test_cli_shard_option(model: Path, folder: Path, tmp_path: Path) -> None:
    def explain(*args: object):
        return CliRunner().invoke(main, ["explain", str(model), str(folder), *map(str, args)], catch_exceptions=False)

    for bad in ["3/3", "x", "1/0", "-1/2"]:
        result = explain("--out", tmp_path / "bad", "--shard", bad)
        assert result.exit_code == 2 and "Invalid value for '--shard'" in result.stderr, result.output
    assert not (tmp_path / "bad").exists()
    result = explain("--out", tmp_path / "out", "--shard", "1/2", "--quiet")
    expected = select_shard(expand_inputs([folder]), Shard(1, 2))
    lines = (tmp_path / "out" / "results.1-of-2.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in lines] == [str(item.path) for item in expected]
    assert result.exit_code == (1 if any("broken" in str(i.path) for i in expected) else 0)
