"""The batch job's parts (inputs, safe names, atomic writes, planning, records) and ``run_batch`` end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model
from skimage import data as skdata
from torch import nn

from onnxcam.batch import (
    RESULTS_FILE,
    BatchOptions,
    BatchUsageError,
    Job,
    artefact_names,
    decode,
    decoded_batches,
    kept_lines,
    last_records,
    parse_list,
    prepare,
    resolve_methods,
    resolve_save,
    run_batch,
)
from onnxcam.contract import TOP1, Preprocess
from onnxcam.explainer import Explainer
from onnxcam.inputs import InputItem, expand_inputs
from onnxcam.outputs import (
    artefact_stem,
    atomic_write,
    inside,
    json_line,
    read_json_lines,
    safe_stem,
)
from onnxcam.targets import TargetError, resolve_target, search_labels
from onnxcam.visual import overlay

LABELS = [f"kind {i}" for i in range(10)]
LAYERS = ["features.1", "features.4"]


class TinyNet(nn.Module):
    """Conv → ReLU → MaxPool → Conv → ReLU → GAP → Linear, 10 classes: exports in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def export_tiny(path: Path) -> Path:
    """A labelled two-layer explainer graph with a 32×40 input (and the standard input gradient) at ``path``."""
    torch.manual_seed(0)
    export_model(
        TinyNet().eval(),
        path,
        LAYERS,
        input_size=(32, 40),
        labels=LABELS,
        exporter="torchscript",
        input_gradients=("standard",),
        log=lambda _: None,
    )
    return path


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or grey / RGBA / 16-bit) array with OpenCV, whose channel order is BGR."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rgb[..., [2, 1, 0, 3][: rgb.shape[2]]] if rgb.ndim == 3 else rgb
    assert cv2.imwrite(str(path), array)
    return path


def small(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::6, ::6])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def explainer(model: Path) -> Explainer:
    return Explainer(model, provider="cpu", threads=1)


# ------------------------------------------------------------------------------------------------------ safe names


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("photo.jpg", "photo"),
        ("../../etc/passwd", "passwd"),
        ("/abs/dir/x y$z.png", "x_y_z"),
        ("café.jpg", "cafe"),
        ("日本.png", "image"),
        (".hidden.jpg", "hidden"),
        ("..", "image"),
        ("-rf.png", "rf"),
        ("a" * 300 + ".jpg", "a" * 64),
    ],
)
def test_safe_stem_is_a_plain_short_ascii_name(name: str, stem: str) -> None:
    assert safe_stem(name) == stem


@pytest.mark.parametrize(
    "name", ["../../evil.jpg", "/etc/passwd", "日本語の写真.png", "a" * 250 + ".jpg", "..", "x/../../y.png", "-.jpg"]
)
def test_artefacts_never_leave_the_output_directory(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = inside(out, f"{artefact_stem(name)}.gradcam++.png")
    assert target.resolve().parent == out.resolve()
    assert len(target.name) < 120
    atomic_write(target, b"ok")
    assert [p.name for p in out.iterdir()] == [target.name]


def test_same_stem_in_two_folders_gets_two_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "cat.jpg", tmp_path / "b" / "cat.jpg"
    assert artefact_stem(a) != artefact_stem(b)
    assert artefact_stem(a).startswith("cat-") and artefact_stem(b).startswith("cat-")
    assert artefact_stem(a) == artefact_stem(tmp_path / "b" / ".." / "a" / "cat.jpg")  # the resolved path counts


@pytest.mark.parametrize("bad", ["", ".", "..", "../x.png", "a/b.png", "/x.png"])
def test_inside_refuses_anything_but_a_plain_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        inside(tmp_path, bad)


# -------------------------------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_files_with_the_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    atomic_write(path, b"first")
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    atomic_write(path, b"old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_json_lines_are_strict_single_lines_and_bad_lines_are_ignored(tmp_path: Path) -> None:
    line = json_line({"a": float("nan"), "b": [float("inf"), 1.5], "c": "two\nlines", "d": "é"})
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
    assert json.loads(line) == {"a": None, "b": [None, 1.5], "c": "two\nlines", "d": "é"}
    path = tmp_path / "r.jsonl"
    path.write_text(line + "[1, 2]\n\n" + '{"cut": ')
    assert [record for _, record in read_json_lines(path)] == [json.loads(line), None, None]
    assert read_json_lines(tmp_path / "missing.jsonl") == []


# --------------------------------------------------------------------------------------------------------- inputs


def test_expand_inputs_files_directories_globs_and_errors(tmp_path: Path) -> None:
    for rel in ["d/b.jpg", "d/a.PNG", "d/sub/c.webp", "d/notes.txt", "d/out/old.png", "g/x1.jpg", "g/x2.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    specs = [
        tmp_path / "d",
        tmp_path / "d" / "notes.txt",  # an explicit file is taken whatever its suffix
        str(tmp_path / "g" / "x*.jpg"),
        tmp_path / "d" / "b.jpg",  # already listed through d/
        tmp_path / "missing.jpg",
        tmp_path / "empty",
        str(tmp_path / "nothing*.png"),
    ]
    items = expand_inputs(specs, exclude=[tmp_path / "d" / "out"])
    rel = [(str(i.path.relative_to(tmp_path)), i.error) for i in items]
    assert rel == [
        ("d/a.PNG", None),
        ("d/b.jpg", None),
        ("d/sub/c.webp", None),
        ("d/notes.txt", None),
        ("g/x1.jpg", None),
        ("g/x2.jpg", None),
        ("missing.jpg", "no such file or directory"),
        ("empty", "directory holds no image files"),
        ("nothing*.png", "pattern matches no image file"),
    ]


def test_recursive_glob_walks_matched_directories(tmp_path: Path) -> None:
    for rel in ["a/1.jpg", "a/b/2.png", "a/b/skip.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    items = expand_inputs([str(tmp_path / "a" / "**")])
    assert [str(i.path.relative_to(tmp_path)) for i in items] == ["a/1.jpg", "a/b/2.png"]


# ------------------------------------------------------------------------------------------------------- planning


def test_parse_and_resolve_options() -> None:
    assert parse_list("gradcam, Grad-CAM++,,layercam") == ("gradcam", "Grad-CAM++", "layercam")
    assert parse_list(["a,b", "c"]) == ("a", "b", "c")
    assert resolve_methods(["Grad-CAM", "gradcam", "grad_cam++"]) == ("gradcam", "gradcam++")
    with pytest.raises(BatchUsageError, match="unknown CAM method 'nope'") as info:
        resolve_methods(["gradcam", "nope"])
    assert info.value.param == "--method"
    assert resolve_save(["npy", "grid"]) == {"npy", "grid"}
    with pytest.raises(BatchUsageError, match="unknown kind 'pdf'"):
        resolve_save(["overlay", "pdf"])


def test_artefact_names_follow_the_save_kinds() -> None:
    names = artefact_names("cat-0123", ["gradcam", "layercam"], frozenset({"overlay", "grid"}))
    assert names == {
        "overlay:gradcam": "cat-0123.gradcam.png",
        "overlay:layercam": "cat-0123.layercam.png",
        "grid": "cat-0123.grid.png",
    }
    assert artefact_names("x", ["gradcam"], frozenset({"npy"})) == {"npy:gradcam": "x.gradcam.npy"}


def test_previous_lines_kept_and_done_names() -> None:
    lines = [
        ('{"name": "a", "status": "error"}', {"name": "a", "status": "error"}),
        ('{"name": "a", "status": "ok"}', {"name": "a", "status": "ok"}),
        ('{"name": "b", "status": "ok"}', {"name": "b", "status": "ok"}),
        ('{"name": "c", "status": "ok"}', {"name": "c", "status": "ok"}),
        ('{"name": "c", "status": "error"}', {"name": "c", "status": "error"}),
        ("garbage", None),
    ]
    assert {name: r["status"] for name, r in last_records(lines).items()} == {"a": "ok", "b": "ok", "c": "error"}
    assert kept_lines(lines, {"b"}) == ['{"name": "b", "status": "ok"}']


def test_prepare_resolves_targets_and_rejects_bad_options(explainer: Explainer) -> None:
    assert prepare(BatchOptions(target="KIND 3"), explainer).target == 3
    assert prepare(BatchOptions(target="7"), explainer).target == 7
    settings = prepare(BatchOptions(target="top1", methods=("Grad-CAM",)), explainer)
    assert settings.target == TOP1 and settings.methods == ("gradcam",) and settings.layers == tuple(LAYERS)
    cases = [
        (BatchOptions(target="kind 33"), "--target", "no class named 'kind 33'"),
        (BatchOptions(target="10"), "--target", "out of range"),
        (BatchOptions(layers=("fc",)), "--layer", "layer 'fc' is not in this graph"),
        (BatchOptions(batch_size=0), "--batch-size", "at least 1"),
        (BatchOptions(alpha=1.5), "--alpha", r"\[0, 1\]"),
    ]
    for options, param, message in cases:
        with pytest.raises(BatchUsageError, match=message) as info:
            prepare(options, explainer)
        assert info.value.param == param


# --------------------------------------------------------------------------------------------------------- stages


def test_decode_reports_vanished_and_broken_files(tmp_path: Path) -> None:
    spec = Preprocess(input_size=(32, 40))
    good = write_image(tmp_path / "g.png", small(skdata.chelsea()))
    vanished = write_image(tmp_path / "v.png", small(skdata.chelsea()))
    text = tmp_path / "t.png"
    text.write_text("not an image")
    jobs = [Job(InputItem(p), p.stem, {}) for p in (good, vanished, text)]
    vanished.unlink()
    decoded = [decode(job, spec) for job in jobs]
    assert decoded[0].error is None and decoded[0].x.shape == (3, 32, 40)
    assert decoded[0].image.shape == (*small(skdata.chelsea()).shape[:2], 3)
    assert decoded[1].error == "file not found" and decoded[1].image is None
    assert decoded[2].error == "not a decodable image"
    assert decode(Job(InputItem(tmp_path / "m", "gone"), "m", {}), spec).error == "gone"


def test_decoded_batches_keep_order_and_size(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [Job(InputItem(tmp_path / f"{i}.png", f"e{i}"), f"n{i}", {}) for i in range(7)]
    with ThreadPoolExecutor(2) as pool:
        batches = list(decoded_batches(pool, jobs, 3, Preprocess()))
    assert [[d.error for d in b] for b in batches] == [["e0", "e1", "e2"], ["e3", "e4", "e5"], ["e6"]]


# ---------------------------------------------------------------------------------------------------- run_batch


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [
        write_image(folder / "cat.jpg", small(skdata.chelsea())),
        write_image(folder / "coffee.png", small(skdata.coffee())),
        write_image(folder / "grey.png", small(skdata.camera())),
    ]


def test_run_batch_maps_equal_the_explainer_at_the_original_size(
    explainer: Explainer, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seen: list[tuple[dict, bool]] = []
    summary = run_batch(
        explainer,
        photos,
        out,
        BatchOptions(methods=("gradcam", "layercam"), save=("overlay", "npy"), batch_size=2, target="kind 2"),
        on_result=lambda record, skipped: seen.append((record, skipped)),
    )
    assert (summary.total, summary.ok, summary.errors, summary.skipped) == (3, 3, 0, 0) and summary.success
    records = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert [r for r, _ in seen] == records
    assert [r["input"] for r in records] == [str(p) for p in photos]
    reference = explainer.explain(photos, target=2, methods=["gradcam", "layercam"])
    for photo, record, expected in zip(photos, records, reference, strict=True):
        image = cv2.cvtColor(cv2.imread(str(photo), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        assert record["status"] == "ok" and record["class_index"] == 2 and record["label"] == "kind 2"
        assert record["probability"] == pytest.approx(expected.probability, rel=1e-5)
        assert record["image_size"] == [height, width]
        for method in ("gradcam", "layercam"):
            cam = np.load(out / record["methods"][method]["npy"])
            want = cv2.resize(expected.maps[method], (width, height), interpolation=cv2.INTER_LINEAR)
            assert cam.dtype == np.float32 and cam.shape == (height, width)
            np.testing.assert_allclose(cam, np.clip(want, 0, 1), atol=1e-5)
            png = cv2.cvtColor(cv2.imread(str(out / record["methods"][method]["overlay"])), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(png[:height], overlay(image, cam, 0.5))
            strip = png[height:]  # the caption strip names the class and its probability
            assert strip.shape[0] >= 20 and (strip < 128).any() and (strip == 255).mean() > 0.5
            assert record["methods"][method]["stats"]["max"] == pytest.approx(float(cam.max()))


def test_cam_without_a_linear_head_is_refused_before_any_image(
    explainer: Explainer, photos: list[Path], tmp_path: Path
) -> None:
    # CAM reads the classifier weights off the gradient, which only works right before the pooling head: the graph
    # says so (a probe run) before the first image is read.
    out = tmp_path / "out"
    with pytest.raises(BatchUsageError, match="cam needs global average pooling") as info:
        run_batch(explainer, photos, out, BatchOptions(methods=("gradcam", "cam"), layers=("features.1",)))
    assert info.value.param == "--method" and not out.exists()
    summary = run_batch(explainer, photos, out, BatchOptions(methods=("cam",), layers=("features.4",)))
    assert (summary.ok, summary.errors) == (3, 0)


def test_a_method_failing_on_an_image_fails_alone(explainer: Explainer, photos: list[Path], tmp_path: Path) -> None:
    """A method raising on a batch (here SmoothGrad given explicit noise for one image, which only the batch of three
    reveals) leaves the other methods' artefacts and a line naming it; the job goes on and reports the failure."""
    options = BatchOptions(
        methods=("gradcam", "smoothgrad", "layercam"),
        save=("overlay", "npy", "grid"),
        method_options={"noise": np.zeros((1, 2, 3, 32, 40), np.float32)},
    )
    summary = run_batch(explainer, photos, tmp_path, options)
    records = [json.loads(line) for line in (tmp_path / RESULTS_FILE).read_text().splitlines()]
    assert (summary.ok, summary.errors) == (0, 3) and not summary.success
    for record in records:
        assert record["status"] == "error" and record["error"].startswith("smoothgrad failed: option 'noise' must be")
        assert record["methods"]["smoothgrad"] == {"error": record["error"].removeprefix("smoothgrad failed: ")}
        for method in ("gradcam", "layercam"):
            for kind in ("overlay", "npy"):
                assert (tmp_path / record["methods"][method][kind]).stat().st_size > 0
        assert (tmp_path / record["grid"]).stat().st_size > 0
        assert not list(tmp_path.glob(f"{record['name']}.smoothgrad.*"))


def test_run_batch_refuses_bad_usage_before_writing_anything(model: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(BatchUsageError, match="no class named") as info:
        run_batch(model, photos, out, BatchOptions(target="no such kind"), provider="cpu")
    assert info.value.param == "--target" and not out.exists()
    with pytest.raises(BatchUsageError, match="no such model file") as info:
        run_batch(tmp_path / "missing.onnx", photos, out)
    assert info.value.param == "MODEL" and not out.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(BatchUsageError, match="not a directory"):
        run_batch(model, photos, tmp_path / "file", provider="cpu")


def test_python_api_takes_one_method_name_and_checks_options_first(explainer: Explainer, photos: list[Path]) -> None:
    [one] = explainer.explain(photos[0], methods="layercam")  # a name, not a sequence of letters
    [listed] = explainer.explain(photos[0], methods=["layercam"])
    assert list(one.maps) == ["layercam"]
    np.testing.assert_array_equal(one.maps["layercam"], listed.maps["layercam"])
    with pytest.raises(ValueError, match="unknown option 'mask'; did you mean 'masks'"):
        explainer.explain(photos[0], methods="rise", options={"mask": 10})


def test_label_search_ranks_whole_words_then_substrings_then_spellings() -> None:
    labels = ["tench", "tabby", "tiger cat", "Persian cat", "crate", "polecat", "golden retriever", "espresso"]
    assert search_labels("cat", labels)[:4] == [2, 3, 5, 4]  # tiger cat, Persian cat, polecat, then crate (spelling)
    assert search_labels("golden retriever dog", labels)[0] == 6
    assert search_labels("espreso", labels) == [7]
    with pytest.raises(TargetError, match=r"no class named 'cat'; did you mean 2 'tiger cat', 3 'Persian cat'"):
        resolve_target("cat", labels, len(labels))
