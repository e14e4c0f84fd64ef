"""``onnxcam evaluate`` end to end through click on a small exported model: good and broken inputs, metrics.jsonl,
the summary table, usage errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result
from skimage import data as skdata
from small_models import export_gapnet

from onnxcam.cli import main
from onnxcam.explainer import Explainer, one_hot_seed
from onnxcam.images import read_image
from onnxcam.metrics import evaluate_maps
from onnxcam.preprocess import preprocess_batch

METHODS = ("gradcam", "layercam")
METRICS = ("deletion", "insertion", "drop_in_confidence")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("model") / "gapnet.onnx")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[Path, str]]:
    """Three photos and two broken inputs (with the cause each must report), interleaved."""
    folder = tmp_path_factory.mktemp("images")
    photos = []
    for name, image in (("cat", skdata.chelsea()), ("coffee", skdata.coffee()), ("rocket", skdata.rocket())):
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(image, (48, 40)), cv2.COLOR_RGB2BGR))
        photos.append(path)
    (folder / "text.png").write_text("not a picture\n")
    broken = {folder / "text.png": "not a decodable image", folder / "missing.png": "no such file or directory"}
    return [photos[0], folder / "text.png", photos[1], folder / "missing.png", photos[2]], broken


def evaluate(*args: object) -> Result:
    return CliRunner().invoke(main, ["evaluate", *map(str, args)], catch_exceptions=False)


def test_scores_good_inputs_and_reports_broken_ones(model: Path, inputs, tmp_path: Path) -> None:
    paths, broken = inputs
    out = tmp_path / "out"
    result = evaluate(
        model, *paths, "--out", out, "--method", ",".join(METHODS), "--metric", ",".join(METRICS),
        "--option", "curve_steps=8", "--batch-size", "2",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # no temporary file left
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in paths]  # one line per input, in input order
    for record, path in zip(records, paths, strict=True):
        if path in broken:
            assert (record["status"], record["error"], record["metrics"]) == ("error", broken[path], {})
            assert f"error: {path}: {broken[path]}\n" in result.stderr
        else:
            assert record["status"] == "ok" and record["error"] is None
            assert sorted(record["metrics"]) == sorted(METHODS)
            for values in record["metrics"].values():
                assert list(values) == list(METRICS)
                assert 0 <= values["deletion"] <= 1 and 0 <= values["insertion"] <= 1
    assert result.stderr.count("error: ") == len(broken)

    # the values are those of the API on the same images (decoded and preprocessed as the job does)
    explainer = Explainer(model, provider="cpu")
    good = [p for p in paths if p not in broken]
    x = preprocess_batch([read_image(p) for p in good], explainer.preprocess)
    explanations = explainer.explain_arrays(x, methods=METHODS)
    seed = one_hot_seed(np.array([e.class_index for e in explanations]), explainer.score_shape)
    maps = {m: np.stack([e.maps[m] for e in explanations]) for m in METHODS}
    expected = evaluate_maps(explainer, x, seed, maps, METRICS, {"curve_steps": 8})
    ok = [r for r in records if r["status"] == "ok"]
    for record, values, explanation in zip(ok, expected, explanations, strict=True):
        assert record["class_index"] == explanation.class_index
        for method in METHODS:
            assert record["metrics"][method] == pytest.approx(values[method], abs=1e-6)

    # the table: one row per metric, one column per method, the means of the ok lines
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["metric"].split()[1:] == list(METHODS)
    assert "deletion (lower is better)" in result.stdout and "insertion (higher is better)" in result.stdout
    for metric in METRICS:
        shown = [float(v) for v in re.findall(r"-?\d+\.\d{4}", rows[metric])]
        means = [np.mean([r["metrics"][m][metric] for r in ok]) for m in METHODS]
        assert shown == pytest.approx(means, abs=6e-5)
    assert "(means over 3 images)" in result.stdout


def test_all_good_inputs_exit_zero(model: Path, inputs, tmp_path: Path) -> None:
    paths, broken = inputs
    good = [p for p in paths if p not in broken]
    result = evaluate(model, *good, "--out", tmp_path, "--metric", "average_drop,increase_in_confidence")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("error: ") == 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(good)
    for line in lines:  # one line per image on stderr as it is scored
        value = line["metrics"]["gradcam"]["average_drop"]
        name = line["label"] or f"class {line['class_index']}"
        assert f"{line['input']}: {name} (" in result.stderr and f"average_drop={value:.4f}" in result.stderr
    quiet = evaluate(model, *good, "--out", tmp_path / "q", "--metric", "average_drop", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and "average_drop" in quiet.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "deletion,roc"], "unknown metric 'roc'"),
        (["--option", "curve_steps=0"], "option curve_steps must be at least 1, got 0"),
        (["--option", "curve_steps"], "expected KEY=VALUE, got 'curve_steps'"),
        (["--option", "road_seed=1.5"], "option road_seed: cannot read 1.5 as int"),
        (["--target", "99"], "class index 99 out of range"),
        (["--method", "nomethod"], "unknown"),
        (["--option", "curve_step=5"], "unknown option 'curve_step'; did you mean 'curve_steps'?"),
        (["--method", "rise", "--option", "masks=0"], "option 'masks' must be an integer >= 1, got 0"),
    ],
)
def test_usage_errors_write_nothing(model: Path, inputs, tmp_path: Path, args: list[str], message: str) -> None:
    paths, _ = inputs
    result = evaluate(model, paths[0], "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


NO_TORCH = """
import sys
from onnxcam.cli import main
try:
    main(["evaluate", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--metric", "all",
          "--option", "curve_steps=4", "--option", "road_percentiles=50"])
except SystemExit as done:
    assert done.code == 0, done.code
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""


def test_evaluate_imports_no_torch(model: Path, inputs, tmp_path: Path) -> None:
    """Every metric runs without torch (ROAD's imputation uses scipy, the optional 'metrics' extra)."""
    paths, _ = inputs
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(model), str(paths[0]), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
