"""JavaScript runtimes of in-graph explainers (issue 16): the web page (onnxruntime-web in headless Chromium, driven by
puppeteer-core) and the Node.js example (onnxruntime-node), each compared with the Python runtime on a real photo.

The page and the example preprocess in JavaScript (web/onnxcam.js); the comparison is end to end: the same PNG file
goes to the page (decoded by Chromium) and to :meth:`Explainer.explain` (decoded by OpenCV), and the input tensor the
page built must equal Python's bit for bit before the maps are compared. The Python maps come from the Python
runtime's own CAM math on the graph's activations and gradients, not from the graph's ``cam:`` outputs.

Needs Node.js, ``web/node_modules`` (``cd web && npm ci``) and, for the page, Chromium (Debian ``chromium``, or
``$CHROMIUM``); each test skips naming what is missing. Default tier: a small random-init net at 32×32; ``slow``: the
real pretrained EfficientNet-Lite0 demo model at 224×224 (exported once per module, ~1–3 min on 2 cores).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from small_models import export_gapnet

from onnxcam.explainer import Explainer
from onnxcam.images import read_image
from onnxcam.preprocess import preprocess
from onnxcam.visual import overlay

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO = 967
MAP_TOLERANCE = 1e-3  # issue 16: the page's map vs Python's
NODE_MAJOR = 20  # sharp 0.35 needs Node.js >= 20.9


def missing(*packages: str, browser: bool = False) -> str | None:
    """What is missing to run JavaScript here: Node.js, an npm package in web/node_modules, or Chromium."""
    if NODE is None:
        return "Node.js is not installed (node not on PATH)"
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < NODE_MAJOR:
        return f"Node.js {version} is too old: web/package.json's packages need {NODE_MAJOR} or later"
    absent = [p for p in packages if not (WEB / "node_modules" / p / "package.json").is_file()]
    if absent:
        return f"npm packages missing in web/node_modules: {', '.join(absent)} (run: cd web && npm ci)"
    if browser and CHROMIUM is None:
        return "Chromium is not installed (apt-get install chromium, or set $CHROMIUM)"
    return None


def requires(*packages: str, browser: bool = False) -> pytest.MarkDecorator:
    """Skip (before any export) naming what is missing."""
    reason = missing(*packages, browser=browser)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def node(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([NODE, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def quantised(cam: np.ndarray) -> np.ndarray:
    """The map as the overlay shows it: ``uint8(255·m)``."""
    return np.uint8(255 * np.clip(cam, 0, 1)).astype(int)


def assert_maps_agree(page: np.ndarray, python: np.ndarray) -> None:
    """≤ 1e-3 apart, and after 8-bit quantisation at most one level apart, mean ≤ 1e-3."""
    assert page.shape == python.shape
    assert float(np.abs(page - python).max()) <= MAP_TOLERANCE
    levels = np.abs(quantised(page) - quantised(python))
    assert levels.max() <= 1 and levels.mean() / 255 <= MAP_TOLERANCE, (levels.max(), levels.mean())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos (skimage.data) as PNG files (lossless: the browser and OpenCV decode the same pixels), and one
    as an EXIF-rotated JPEG (decoded by two JPEG decoders; the page must apply the orientation as Python does)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.png"
        cv2.imwrite(str(paths[name]), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90° clockwise to view
    paths["coffee-exif"] = folder / "coffee-exif.jpg"
    Image.fromarray(data.coffee()).save(paths["coffee-exif"], exif=exif.tobytes(), quality=92)
    return paths


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GapNet (random init, 32×32) with in-graph Grad-CAM and LayerCAM."""
    return export_gapnet(tmp_path_factory.mktemp("small") / "gapnet.onnx", in_graph=["gradcam", "layercam"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained EfficientNet-Lite0 demo recipe with in-graph Grad-CAM, exported once for this module."""
    from onnxcam_export.api import export_source

    path = tmp_path_factory.mktemp("demo") / "efficientnet_lite0.onnx"
    source = f"{ROOT}/models/efficientnet_lite0.py:build"
    export_source(source, [], path, log=lambda _: None, in_graph=["gradcam"])
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A static file server over the repository (the page, its module, onnxruntime-web's .mjs/.wasm files)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(ROOT)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/web/index.html"
    httpd.shutdown()
    thread.join()


def drive(url: str, model: Path, image: Path, out: Path, *extra: str) -> dict:
    """Run web/drive.mjs: Chromium opens the page, picks ``model`` and ``image``; returns what the page computed."""
    node("web/drive.mjs", "--url", url, "--model", str(model), "--image", str(image), "--out", str(out),
         "--chromium", CHROMIUM, *extra)  # fmt: skip
    result = json.loads(out.read_text())
    assert "error" not in result, result["error"]
    return result


def decoded(result: dict, key: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(result[key]), dtype).reshape(shape)


def check_page(result: dict, model: Path, photo: Path, exact_input: bool = True) -> Explainer:
    """The page's input tensor equals Python's bit for bit (JPEG: within 2 pixel levels, two decoders); map, class,
    probability and overlay agree."""
    explainer = Explainer(model, provider="cpu")
    image = read_image(photo)
    (python,) = explainer.explain([image], methods=[result["method"]])
    h, w = explainer.preprocess.input_size
    x = decoded(result, "input", np.float32, (3, h, w))
    if exact_input:
        np.testing.assert_array_equal(x, preprocess(image, explainer.preprocess))
    else:
        level = 2 * explainer.preprocess.value_scale / min(explainer.preprocess.std)
        np.testing.assert_allclose(x, preprocess(image, explainer.preprocess), rtol=0, atol=level)
    assert result["class"] == python.class_index
    assert result["probability"] == pytest.approx(python.probability, abs=1e-4)
    assert_maps_agree(decoded(result, "map", np.float32, (h, w)), python.maps[result["method"]])
    shown = decoded(result, "overlay", np.uint8, (*image.shape[:2], 4))[..., :3].astype(int)
    levels = np.abs(shown - overlay(image, python.maps[result["method"]]))
    assert levels.max() <= 3 and (levels > 0).mean() < 0.01, (levels.max(), (levels > 0).mean())
    return explainer


@requires()
def test_resize_is_opencvs(photos: dict[str, Path], tmp_path: Path) -> None:
    """web/onnxcam.js's bilinear resize equals cv2.resize(INTER_LINEAR) bit for bit when shrinking; when enlarging,
    only the first and last rows may be off, by 1."""
    image = read_image(photos["chelsea"])  # 300×451
    raw = tmp_path / "pixels.raw"
    raw.write_bytes(image.tobytes())
    sizes = [(224, 224), (32, 32), (299, 450), (97, 31), (600, 900), (350, 451)]
    script = (
        "import('./web/onnxcam.js').then((m) => { const px = require('fs').readFileSync(process.argv[1]);"
        "for (const [h, w] of JSON.parse(process.argv[2]))"
        f" process.stdout.write(m.resizeLinearU8(px, {image.shape[1]}, {image.shape[0]}, 3, w, h)); }})"
    )
    out = subprocess.run([NODE, "-e", script, str(raw), json.dumps(sizes)], capture_output=True, cwd=ROOT, check=True)
    offset = 0
    for h, w in sizes:
        js = np.frombuffer(out.stdout[offset : offset + h * w * 3], np.uint8).reshape(h, w, 3).astype(int)
        offset += h * w * 3
        cv = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(int)
        if h <= image.shape[0] and w <= image.shape[1]:
            np.testing.assert_array_equal(js, cv, err_msg=f"{h}×{w}")
        else:
            assert np.abs(js - cv).max() <= 1 and not (js != cv)[1:-1].any(), f"{h}×{w}"
    assert offset == len(out.stdout)


@requires("onnxruntime-node", "sharp")
def test_node_example_matches_python(small: Path, photos: dict[str, Path], tmp_path: Path) -> None:
    """examples/explain.mjs (onnxruntime-node): the map, class and overlay equal the Python runtime's."""
    for method in ("gradcam", "layercam"):
        out = tmp_path / method
        line = node("examples/explain.mjs", str(small), str(photos["coffee"]), "--method", method, "--out", str(out))
        printed = json.loads(line.stdout)
        image = read_image(photos["coffee"])
        (python,) = Explainer(small, provider="cpu").explain([image], methods=[method])
        cam = np.load(f"{out}.npy")
        np.testing.assert_allclose(cam, python.maps[method], atol=1e-5)
        assert printed["class"] == python.class_index
        assert printed["probability"] == pytest.approx(python.probability, abs=1e-5)
        shown = read_image(f"{out}.png").astype(int)
        assert np.abs(shown - overlay(image, python.maps[method])).max() <= 3


@requires("onnxruntime-node", "sharp")
def test_node_example_refuses_a_graph_without_maps(tmp_path: Path) -> None:
    plain = export_gapnet(tmp_path / "plain.onnx")
    done = subprocess.run([NODE, "examples/explain.mjs", str(plain), "x.png"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "explain.mjs: this explainer graph has no in-graph maps: export it with `onnxcam export … --in-graph gradcam`"
    )


@requires("onnxruntime-node", "sharp")
def test_node_example_errors_name_the_input(tmp_path: Path) -> None:
    """onnxruntime's and sharp's messages ('protobuf parsing failed', 'unsupported image format') named no file."""
    model = export_gapnet(tmp_path / "cam.onnx", in_graph=["gradcam"])
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    for args, path in (([str(text), str(text)], text), ([str(model), str(text)], text)):
        done = subprocess.run([NODE, "examples/explain.mjs", *args], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"explain.mjs: {path}: ") and done.stderr.count("\n") == 1, done.stderr


@requires("onnxruntime-web", "puppeteer-core", browser=True)
def test_page_matches_python(small: Path, photos: dict[str, Path], server: str, tmp_path: Path) -> None:
    """The web page in headless Chromium (onnxruntime-web, WebAssembly) on a real photo, small net."""
    result = drive(server, small, photos["chelsea"], tmp_path / "page.json", "--method", "layercam")
    assert result["method"] == "layercam" and result["shape"] == [32, 32]
    check_page(result, small, photos["chelsea"])


@pytest.mark.slow
@requires("onnxruntime-web", "puppeteer-core", browser=True)
def test_page_explains_the_demo_model(demo: Path, photos: dict[str, Path], server: str, tmp_path: Path) -> None:
    """The pretrained EfficientNet-Lite0 in the browser: the cat and the espresso recognised, maps equal Python's."""
    for name, wanted in (("chelsea", CATS), ("coffee", {ESPRESSO}), ("coffee-exif", {ESPRESSO})):
        result = drive(server, demo, photos[name], tmp_path / f"{name}.json")
        assert result["class"] in wanted, result["label"]
        check_page(result, demo, photos[name], exact_input=photos[name].suffix == ".png")
    assert result["image_shape"] == [600, 400]  # the EXIF-rotated JPEG as a person sees it (stored 400×600)


@pytest.mark.slow
@requires("onnxruntime-node", "sharp")
def test_node_example_explains_the_demo_model(demo: Path, photos: dict[str, Path], tmp_path: Path) -> None:
    line = node("examples/explain.mjs", str(demo), str(photos["chelsea"]), "--out", str(tmp_path / "cat"))
    assert json.loads(line.stdout)["class"] in CATS
    (python,) = Explainer(demo, provider="cpu").explain([read_image(photos["chelsea"])], methods=["gradcam"])
    np.testing.assert_allclose(np.load(tmp_path / "cat.npy"), python.maps["gradcam"], atol=1e-5)


@requires("onnxruntime-web", "puppeteer-core", browser=True)
def test_page_error_names_a_file_that_is_not_onnx(photos: dict[str, Path], server: str, tmp_path: Path) -> None:
    """A file onnxruntime-web cannot parse is one line on the page naming that file, not onnxruntime's raw error."""
    bogus = tmp_path / "notes.onnx"
    bogus.write_bytes(b"not a protobuf at all")
    node("web/drive.mjs", "--url", server, "--model", str(bogus), "--image", str(photos["chelsea"]),
         "--out", str(tmp_path / "page.json"), "--chromium", CHROMIUM)  # fmt: skip
    error = json.loads((tmp_path / "page.json").read_text())["error"]
    assert error.startswith("notes.onnx: not an ONNX model") and "\n" not in error, error
