"""``onnxcam explain`` end to end through click: good and broken inputs, artefacts, results.jsonl, reruns, usage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from onnxcam_export.api import export_model
from skimage import data as skdata
from test_batch import LABELS, LAYERS, TinyNet, export_tiny, small, write_image

from onnxcam.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Decodable images: colour JPEG and PNG, grey, RGBA and 16-bit PNG (read_image converts them)."""
    folder = tmp_path_factory.mktemp("good")
    rgba = np.dstack([small(skdata.coffee()), np.full(small(skdata.coffee()).shape[:2], 200, np.uint8)])
    return {
        "cat.jpg": write_image(folder / "cat.jpg", small(skdata.chelsea())),
        "coffee.png": write_image(folder / "coffee.png", small(skdata.coffee())),
        "grey.png": write_image(folder / "grey.png", small(skdata.camera())),
        "rgba.png": write_image(folder / "rgba.png", rgba),
        "deep.png": write_image(folder / "deep.png", small(skdata.astronaut()).astype(np.uint16) * 257),
    }


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Inputs that must fail, with the cause each must report."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not a picture\n")
    ok, jpeg = cv2.imencode(".jpg", small(skdata.chelsea()))
    assert ok
    (folder / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    return {
        "zero.jpg": (folder / "zero.jpg", "empty file"),
        "text.png": (folder / "text.png", "not a decodable image"),
        "cut.jpg": (folder / "cut.jpg", "not a decodable image"),
        "missing.jpg": (folder / "missing.jpg", "no such file or directory"),
    }


def explain(*args: object) -> Result:
    return CliRunner().invoke(main, ["explain", *map(str, args)], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def out_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_good_and_broken_inputs(
    model: Path, good: dict[str, Path], broken: dict[str, tuple[Path, str]], tmp_path: Path
):
    out = tmp_path / "out"
    inputs = [*good.values(), *(path for path, _ in broken.values())]
    result = explain(model, *inputs, "--out", out, "--method", "gradcam,layercam", "--save", "overlay,npy,grid")
    assert result.exit_code == 1, result.output
    lines = records(out)
    assert [r["input"] for r in lines] == [str(p) for p in inputs]  # exactly one line per input, in input order
    for line, (path, cause) in zip(lines[len(good) :], broken.values(), strict=True):
        assert (line["status"], line["error"], line["class_index"], line["methods"]) == ("error", cause, None, {})
        assert f"error: {path}: {cause}\n" in result.stderr
    assert result.stderr.count("error: ") == len(broken)
    for line, path in zip(lines[: len(good)], good.values(), strict=True):
        height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
        assert line["status"] == "ok" and line["error"] is None and line["image_size"] == [height, width]
        assert line["label"] == LABELS[line["class_index"]] and len(line["topk"]) == 5
        assert line["topk"][0]["index"] == line["class_index"]  # target top1
        assert 0 < line["probability"] <= 1 and set(line["timings_ms"]) == {"decode", "inference_cam", "write"}
        assert f"{path}: {line['label']} (" in result.stdout
        for method in ("gradcam", "layercam"):
            entry = line["methods"][method]
            cam = np.load(out / entry["npy"])
            assert cam.dtype == np.float32 and cam.shape == (height, width)
            assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0.5
            assert entry["stats"]["mean"] == pytest.approx(float(cam.mean()), rel=1e-5)
            picture = cv2.imread(str(out / entry["overlay"]))  # the overlay over a caption strip
            assert picture.shape[0] >= height + 20 and picture.shape[1:] == (width, 3)
            assert entry["overlay"] == f"{line['name']}.{method}.png" and line["name"].startswith(path.stem + "-")
        grid = cv2.imread(str(out / line["grid"]))
        assert grid.shape[0] > 0 and grid.shape[1] > 2 * grid.shape[0]  # original | gradcam | layercam
    expected = {"results.jsonl"} | {
        f"{r['name']}.{suffix}" for r in lines[: len(good)] for suffix in ("gradcam.png", "gradcam.npy", "layercam.png")
    }
    expected |= {f"{r['name']}.{s}" for r in lines[: len(good)] for s in ("layercam.npy", "grid.png")}
    assert out_files(out) == expected  # nothing for the broken inputs, no temporary files
    assert len(result.stdout.splitlines()) == len(good)
    assert "on CPUExecutionProvider" in result.stderr and f"{len(good)} ok, {len(broken)} failed" in result.stderr


def test_all_good_exits_zero_and_saves_only_what_is_asked(model: Path, good: dict[str, Path], tmp_path: Path) -> None:
    result = explain(model, good["cat.jpg"], good["grey.png"], "--out", tmp_path, "--save", "npy", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    names = [r["name"] for r in records(tmp_path)]
    assert out_files(tmp_path) == {"results.jsonl"} | {f"{n}.gradcam.npy" for n in names}


def test_same_named_files_in_two_folders_do_not_collide(model: Path, tmp_path: Path) -> None:
    a = write_image(tmp_path / "a" / "img.png", small(skdata.chelsea()))
    b = write_image(tmp_path / "b" / "img.png", small(skdata.coffee()))
    out = tmp_path / "out"
    result = explain(model, tmp_path / "a", tmp_path / "b", "--out", out, "--save", "npy")
    assert result.exit_code == 0, result.output
    first, second = records(out)
    assert first["input"] == str(a) and second["input"] == str(b) and first["name"] != second["name"]
    maps = [np.load(out / r["methods"]["gradcam"]["npy"]) for r in (first, second)]
    assert maps[0].shape == small(skdata.chelsea()).shape[:2] and maps[1].shape == small(skdata.coffee()).shape[:2]


def test_directory_input_does_not_pick_up_its_own_output(model: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "cat.png", small(skdata.chelsea()))
    for _ in range(2):
        result = explain(model, tmp_path, "--out", tmp_path / "cams")
        assert result.exit_code == 0, result.output
        assert len(records(tmp_path / "cams")) == 1


def test_skip_existing_keeps_one_line_per_input_and_retries_errors(
    model: Path, good: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    cat = write_image(folder / "cat.png", small(skdata.chelsea()))
    coffee = write_image(folder / "coffee.png", small(skdata.coffee()))
    late = folder / "late.png"
    late.write_bytes(b"")  # fails now, fixed before the rerun
    out = tmp_path / "out"
    args = (model, folder, "--out", out, "--save", "overlay,npy", "--skip-existing")
    assert explain(*args).exit_code == 1
    first = {r["input"]: r for r in records(out)}
    assert first[str(late)]["status"] == "error"

    write_image(late, small(skdata.camera()))
    (out / first[str(coffee)]["methods"]["gradcam"]["npy"]).unlink()  # an artefact gone: redo that input
    result = explain(*args)
    assert result.exit_code == 0, result.output
    lines = records(out)
    assert sorted(r["input"] for r in lines) == sorted(map(str, (cat, coffee, late)))  # no duplicates
    assert all(r["status"] == "ok" for r in lines)
    assert lines[0] == first[str(cat)]  # the skipped input's line is kept as it was
    assert f"{cat}: " in result.stdout and "[skipped: done before]" in result.stdout
    assert "1 skipped" in result.stderr and "2 ok" in result.stderr

    result = explain(*args)
    assert result.exit_code == 0 and "0 ok, 0 failed, 3 skipped" in result.stderr
    assert records(out) == lines


def test_target_by_label_and_by_index(model: Path, good: dict[str, Path], tmp_path: Path) -> None:
    def run(name: str, *target: str) -> tuple[Result, dict, np.ndarray]:
        result = explain(model, good["cat.jpg"], "--out", tmp_path / name, "--save", "npy", *target)
        assert result.exit_code == 0, result.output
        (line,) = records(tmp_path / name)
        return result, line, np.load(tmp_path / name / line["methods"]["gradcam"]["npy"])

    _, top1, top1_map = run("top1")
    other = (top1["class_index"] + 1) % len(LABELS)  # a class that is not the prediction
    by_label, label_line, label_map = run("label", "--target", LABELS[other].upper())
    by_index, index_line, index_map = run("index", "--target", str(other))
    assert label_line["class_index"] == index_line["class_index"] == other
    assert label_line["label"] == index_line["label"] == LABELS[other]
    assert label_line["topk"][0]["index"] == top1["class_index"]  # the prediction is still reported
    np.testing.assert_array_equal(label_map, index_map)
    assert not np.allclose(label_map, top1_map, atol=1e-3)  # another class, another map
    assert f"; explained {LABELS[other]}" in by_label.stdout and f"; explained {LABELS[other]}" in by_index.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "gradcam,nocam"], "Invalid value for --method: unknown CAM method 'nocam'; available: "),
        (["--target", "kind 77"], "Invalid value for --target: no class named 'kind 77'; did you mean"),
        (["--target", "12"], "Invalid value for --target: class index 12 out of range [0, 10)"),
        (["--layer", "fc"], "Invalid value for --layer: layer 'fc' is not in this graph; it has: features.1, feat"),
        (["--save", "overlay,pdf"], "Invalid value for --save: unknown kind 'pdf'"),
        (["--alpha", "2"], "Invalid value for '--alpha'"),
        (
            ["--method", "rise", "--option", "mask=300"],
            "Invalid value for --option: unknown option 'mask'; did you mean 'masks'? (valid options for rise: "
            "batch_size, cells, masks, p, random_seed, score)",
        ),
        (["--method", "rise", "--option", "masks=many"], "option 'masks' must be an integer >= 1, got 'many'"),
        (["--method", "occlusion", "--option", "score=odds"], "option 'score' must be one of logit, probability"),
        (["--method", "occlusion", "--option", "patch=33"], "occlusion patch 33 is larger than the input (32)"),
        (["--method", "integratedgradients", "--option", "steps=1"], "option 'steps' must be >= 2 for riemann_right"),
        (["--option", "steps=8"], "option 'steps' is read by integratedgradients, which this run does not use"),
        (["--option", "curve_steps=8"], "option 'curve_steps' is read by the metrics (--metric)"),
        (["--method", "cam", "--layer", "features.1"], "cam needs global average pooling → a linear layer right after"),
    ],
)
def test_bad_usage_fails_fast(model: Path, good: dict[str, Path], tmp_path: Path, options: list, message: str):
    result = explain(model, good["cat.jpg"], "--out", tmp_path / "out", *options)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()  # no work done


def test_bad_model_fails_fast(good: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "plain.onnx").write_text("not a protobuf")
    missing = explain(tmp_path / "none.onnx", good["cat.jpg"], "--out", tmp_path / "out")
    broken = explain(tmp_path / "plain.onnx", good["cat.jpg"], "--out", tmp_path / "out")
    assert missing.exit_code == broken.exit_code == 2
    assert "Invalid value for MODEL" in missing.stderr and "no such model file" in missing.stderr
    assert "not a loadable ONNX model" in broken.stderr
    assert not (tmp_path / "out").exists()


def test_runtime_modules_do_not_import_torch() -> None:
    code = "import sys, onnxcam.batch, onnxcam.cli.explain_cmd; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_model_methods_metrics_and_options_in_the_report(model: Path, good: dict[str, Path], tmp_path: Path):
    out = tmp_path / "out"
    inputs = [good["cat.jpg"], good["coffee.png"]]
    result = explain(
        model, *inputs, "--out", out, "--method", "gradcam,integratedgradients", "--metric", "deletion,insertion",
        "--option", "steps=4", "--option", "curve_steps=5", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluated = tmp_path / "evaluated"
    check = CliRunner().invoke(
        main,
        ["evaluate", str(model), *map(str, inputs), "--out", str(evaluated), "--method", "gradcam",
         "--metric", "deletion,insertion", "--option", "curve_steps=5"],
    )  # fmt: skip
    assert check.exit_code == 0, check.output
    scored = {r["input"]: r for r in map(json.loads, (evaluated / "metrics.jsonl").read_text().splitlines())}
    for record in records(out):
        methods = record["methods"]
        assert np.isfinite(methods["integratedgradients"]["details"]["completeness_gap"])
        for metric in ("deletion", "insertion"):
            value = methods["gradcam"]["metrics"][metric]
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(scored[record["input"]]["metrics"]["gradcam"][metric], abs=1e-6)


def test_pixel_limit_refuses_large_images_before_decoding(model: Path, good: dict[str, Path], tmp_path: Path):
    out = tmp_path / "out"
    result = explain(model, good["cat.jpg"], "--out", out, "--max-megapixels", "0.001", "-q")
    assert result.exit_code == 1
    [record] = records(out)
    assert record["status"] == "error" and "too large" in record["error"]


def test_method_the_graph_cannot_serve_is_a_usage_error(good: dict[str, Path], tmp_path: Path):
    lean = tmp_path / "lean.onnx"
    torch.manual_seed(0)
    export_model(TinyNet().eval(), lean, LAYERS, input_size=(32, 40), exporter="torchscript", input_gradients=(),
                 heads=False, log=lambda _: None)  # fmt: skip
    for method, hint in (("guidedbackprop", "--input-gradient guided"), ("ablationcam", "head graph")):
        result = CliRunner().invoke(main, ["explain", str(lean), str(good["cat.jpg"]), "--out", str(tmp_path / method),
                                           "--method", method])  # fmt: skip
        assert result.exit_code == 2 and hint in result.output, result.output
        assert not (tmp_path / method / "results.jsonl").exists()


def test_a_rerun_leaves_only_this_runs_results(model: Path, good: dict[str, Path], tmp_path: Path) -> None:
    """Without --resume the folder is started over: the previous run's artefacts (here .npy maps this run does not
    save, and the error line of a pattern that matched nothing) are gone; files onnxcam never wrote stay."""
    folder, out = tmp_path / "imgs", tmp_path / "out"
    folder.mkdir()
    assert explain(model, f"{folder}/*.png", "--out", out, "--save", "overlay,npy", "-q").exit_code == 1
    assert [r["error"] for r in records(out)] == ["pattern matches no image file"]
    write_image(folder / "cat.png", small(skdata.chelsea()))
    assert explain(model, f"{folder}/*.png", "--out", out, "--save", "overlay,npy", "-q").exit_code == 0
    (out / "notes.txt").write_text("mine")
    old = records(out)
    assert [r["status"] for r in old] == ["ok"] and (out / old[0]["methods"]["gradcam"]["npy"]).exists()
    for resume in ((), ("--resume",)):
        result = explain(model, f"{folder}/*.png", "--out", out, "--save", "overlay", "-q", *resume)
        assert result.exit_code == 0, result.output
        [line] = records(out)
        assert line["status"] == "ok" and out_files(out) == {
            "results.jsonl",
            "notes.txt",
            line["methods"]["gradcam"]["overlay"],
        }


def test_an_image_smaller_than_the_feature_grid_is_explained_with_a_warning(model: Path, tmp_path: Path) -> None:
    tiny = write_image(tmp_path / "tiny.png", small(skdata.chelsea())[:3, :3])
    result = explain(model, tiny, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    [line] = records(tmp_path / "out")
    assert line["status"] == "ok" and line["warnings"][0].startswith("image 3x3 is smaller than the feature grid")
    assert f"warning: {tiny}: image 3x3 is smaller than the feature grid" in result.stderr


def test_huge_images_are_decoded_small_and_drawn_at_the_capped_size(model: Path, tmp_path: Path) -> None:
    """A 2400×1600 JPEG with --max-side 500: libjpeg decodes it at 1/2 (it must stay >= the cap), the overlay and
    map are 500 px on the long side, the record keeps the file's size; the map equals the one of the image decoded
    at that scale."""
    photo = cv2.resize(small(skdata.chelsea()), (2400, 1600), interpolation=cv2.INTER_LINEAR)
    path = write_image(tmp_path / "big.jpg", photo)
    result = explain(model, path, "--out", tmp_path / "out", "--save", "overlay,npy", "--max-side", "500", "-q")
    assert result.exit_code == 0, result.output
    [line] = records(tmp_path / "out")
    assert line["image_size"] == [1600, 2400] and line["artefact_size"] == [333, 500]
    assert np.load(tmp_path / "out" / line["methods"]["gradcam"]["npy"]).shape == (333, 500)
    assert cv2.imread(str(tmp_path / "out" / line["methods"]["gradcam"]["overlay"])).shape[1] == 500


def _run_on_terminal(args: list[str], tty: bool) -> str:
    """stderr of ``python -m onnxcam ARGS`` on a pseudo-terminal (``tty``) or a pipe."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    command = [sys.executable, "-m", "onnxcam", *args]
    if not tty:
        return subprocess.run(command, capture_output=True, text=True, check=False).stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait()
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_only(model: Path, good: dict[str, Path], tmp_path: Path) -> None:
    args = ["explain", str(model), str(good["cat.jpg"]), str(good["coffee.png"]), "--method", "gradcam,rise",
            "--option", "masks=300", "--option", "batch_size=50"]  # fmt: skip
    terminal = _run_on_terminal([*args, "--out", str(tmp_path / "tty")], tty=True)
    assert "explaining" in terminal and "2/2" in terminal and "RISE masks" in terminal, terminal
    piped = _run_on_terminal([*args, "--out", str(tmp_path / "pipe")], tty=False)
    assert "explaining" not in piped and "RISE masks" not in piped and "\r" not in piped, piped
    quiet = _run_on_terminal([*args, "--out", str(tmp_path / "quiet"), "-q"], tty=True)
    assert quiet.strip() == "", quiet


def test_target_search_lists_the_cat_classes_first(good: dict[str, Path], tmp_path: Path) -> None:
    names = ["tench", "tabby", "tiger cat", "Persian cat", "crate", "oxcart", "Egyptian cat", "polecat", "castle", "ox"]
    graph = tmp_path / "named.onnx"
    torch.manual_seed(0)
    export_model(TinyNet().eval(), graph, LAYERS, input_size=(32, 40), exporter="torchscript",
                 labels=names, log=lambda _: None)  # fmt: skip
    result = explain(graph, good["cat.jpg"], "--out", tmp_path / "out", "--target", "cat")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "no class named 'cat'; did you mean 2 'tiger cat', 3 'Persian cat', 6 'Egyptian cat', 7 'polecat'" in message


def test_help_lists_every_methods_options() -> None:
    result = CliRunner().invoke(main, ["explain", "--help"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["rise", "masks", "[4000]"] for line in lines)
    assert any(line.split()[:2] == ["cells", "[7]"] for line in lines)  # rise's second row
