"""What a new user ran into with today's features, each now one line and an exit status: per-input pointing-game
boxes across batches, a unit target's per-image line, non-finite option values (a NaN map before), picture outputs
the commands cannot write (a traceback after the work before), onnxruntime's warnings during an --in-graph export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result
from skimage import data as skdata
from small_models import export_gapnet

from onnxcam.cli import main
from onnxcam.cli.evaluate_cmd import image_line
from onnxcam.methods.options import check_options


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("edges") / "gapnet.onnx", input_gradients=("standard",))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee", "rocket"):
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(getattr(skdata, name)(), (48, 40)), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def pointing(model: Path, photos: list[Path], out: Path, *extra: object) -> Result:
    return run("evaluate", model, *photos, "-o", out, "--metric", "pointing_game", "-q", *extra)


def test_per_input_boxes_follow_the_inputs_across_batches(model: Path, photos: list[Path], tmp_path: Path) -> None:
    # the whole input (always a hit), a 1-pixel corner and the opposite corner at tolerance 0 (hits only there)
    boxes = "0,0,31,31,0,0,0,0,31,31,31,31"
    values = {}
    for size in (3, 1, 2):
        out = tmp_path / f"b{size}"
        result = pointing(model, photos, out, "--option", f"pointing_box={boxes}", "--option", "pointing_tolerance=0",
                          "--batch-size", size)  # fmt: skip
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        values[size] = [line["metrics"]["gradcam"]["pointing_game"] for line in lines]
    assert values[1] == values[2] == values[3]  # batch 1 and 2 failed every batch before (4·N counted per batch)
    assert values[3][0] == 1.0


@pytest.mark.parametrize("box", [None, "0,0,31", "0,0,31,31,0,0,31,31"])
def test_a_missing_or_misshapen_box_is_refused_before_any_image(
    model: Path, photos: list[Path], tmp_path: Path, box: str | None
) -> None:
    extra = ["--option", f"pointing_box={box}"] if box else []
    result = pointing(model, photos, tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    assert "--option" in result.output and "4·3 = 12 numbers" in result.output
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_unit_target_line_shows_no_probability() -> None:
    record = {"input": "cat.png", "label": "channel:3 of layer4", "class_index": -1, "probability": float("nan"),
              "metrics": {"gradcam": {"sparseness": 0.5}}}  # fmt: skip
    assert image_line(record) == "cat.png: channel:3 of layer4: gradcam sparseness=0.5000"
    assert image_line({**record, "probability": None}) == image_line(record)
    assert "(25.0%)" in image_line({**record, "probability": 0.25})


NON_FINITE = [
    ("occlusion", "baseline"),
    ("lime", "baseline"),
    ("integratedgradients", "baseline"),
    ("smoothgrad", "noise"),
]


@pytest.mark.parametrize(("method", "option"), NON_FINITE)
def test_non_finite_option_values_are_refused(method: str, option: str) -> None:
    with pytest.raises(ValueError, match=f"option '{option}' must be finite numbers"):
        check_options([method], [], {option: float("nan")})
    with pytest.raises(ValueError, match="an array of shape \\(2, 3\\) with non-finite"):
        check_options([method], [], {option: np.array([[0, 1, 2], [3, np.inf, 5]])})


def test_cli_nan_baseline_exits_2_before_any_map(model: Path, photos: list[Path], tmp_path: Path) -> None:
    result = run("explain", model, photos[0], "--method", "occlusion", "--option", "baseline=nan", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "option 'baseline' must be finite numbers" in result.output
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("name", "says"),
    [("vis.xyz", "cannot write an image with .xyz"), ("noext", "with no extension"),
     ("nodir/vis.png", "the folder")],
)  # fmt: skip
@pytest.mark.parametrize("command", [["visualize", "--target", "1", "--steps", "1"], ["maps", "--filters"]])
def test_picture_outputs_checked_before_the_work(model: Path, tmp_path: Path, command, name: str, says: str) -> None:
    result = run(command[0], model, *command[1:], "-o", tmp_path / name)
    assert result.exit_code == 2, result.output
    assert says in result.output and "'--out'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("option", "value"), [("--blur", "-1"), ("--lr", "0"), ("--l2", "1")])
def test_visualize_ranges_name_the_option(model: Path, tmp_path: Path, option: str, value: str) -> None:
    result = run("visualize", model, "--target", "1", option, value, "-o", tmp_path / "v.png")
    assert result.exit_code == 2 and f"'{option}'" in result.output
    assert not (tmp_path / "v.png").exists()


def test_in_graph_export_prints_no_onnxruntime_warnings(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    export_gapnet(tmp_path / "cam.onnx", in_graph=["gradcam"], verify=False)
    assert "W:onnxruntime" not in capfd.readouterr().err


def test_probability_metrics_of_raw_scores_are_refused_before_any_image(tmp_path: Path) -> None:
    """A regression head's raw scores (and a unit target's values) have no probabilities: deletion, insertion and
    average_drop were tried per image and failed each with advice (metric_score=logit) that does not apply."""
    from onnxcam_export.api import export_model
    from small_models import GapNet

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = tmp_path / "raw.onnx"
    export_model(GapNet().eval(), model, ["body.3"], (32, 32), exporter="torchscript", log=lambda _: None,
                 scores_kind="raw", verify=False)  # fmt: skip
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    for command in ("evaluate", "explain"):
        result = run(command, model, image, "-o", tmp_path / command, "--metric", "sparseness,insertion,average_drop")
        assert result.exit_code == 2, result.output
        assert "insertion, average_drop score the target's probability" in result.output
        assert "raw.onnx (raw scores)" in result.output and "sparseness" in result.output
    good = run("evaluate", model, image, "-o", tmp_path / "ok", "--metric", "sparseness,confidence_change")
    assert good.exit_code == 0, good.output


@pytest.mark.parametrize("box", [None, "0,0,31,31,0,0,31,31"])
def test_explain_pointing_game_takes_one_box_checked_first(
    model: Path, photos: list[Path], tmp_path: Path, box: str | None
) -> None:
    """explain failed every image ("inference failed") without a box, and counted 4·N per batch, not per run."""
    extra = ["--option", f"pointing_box={box}"] if box else []
    args = ["explain", model, *photos[:2], "--metric", "pointing_game", "-q", "--batch-size", "1"]
    result = run(*args, *extra, "-o", tmp_path / "bad")
    assert result.exit_code == 2, result.output
    assert "one box for every image" in result.output and "onnxcam evaluate" in result.output
    assert not (tmp_path / "bad" / "results.jsonl").exists()
    good = run(*args, "--option", "pointing_box=0,0,31,31", "-o", tmp_path / "good")
    assert good.exit_code == 0, good.output
    lines = [json.loads(line) for line in (tmp_path / "good" / "results.jsonl").read_text().splitlines()]
    assert [line["methods"]["gradcam"]["metrics"]["pointing_game"] for line in lines] == [1.0, 1.0]


def test_no_probabilities_message_fits_a_unit_target() -> None:
    """A unit target explains raw values on a graph whose scores are logits: "this graph's scores are raw" misled."""
    from onnxcam.scores import RAW, ScoresError, probabilities

    with pytest.raises(ScoresError, match=r"^raw values \(a regression or embedding head, or a unit target\) have no"):
        probabilities(np.zeros((1, 3)), RAW)


@pytest.mark.parametrize(("methods", "says"), [("foo", "not an in-graph method"), ("eigencam", "needs an SVD")])
def test_in_graph_method_refused_before_the_model_is_loaded(tmp_path: Path, methods: str, says: str) -> None:
    """Was refused only after loading and tracing the model (a source that does not exist shows the order)."""
    result = run("export", tmp_path / "absent.py:build", "--in-graph", methods, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1 and f"--in-graph {methods}: {says}" in result.output, result.output


def test_maps_unknown_layer_names_the_option(model: Path, photos: list[Path], tmp_path: Path) -> None:
    result = run("maps", model, photos[0], "--layer", "nope", "-o", tmp_path / "m.png")
    assert result.exit_code == 2 and "Invalid value for --layer: 'nope' is not in this graph" in result.output
