"""Hostile inputs: broken and huge images, odd pixel formats, EXIF rotation, untrusted models, nasty file names and
pickled weights. Every corpus file is generated here, in ``tmp_path``; references are Pillow, ``onnx`` and the bytes
the tests write themselves."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.sources import SourceError, load_module
from PIL import Image, ImageOps
from small_models import export_gapnet

from onnxcam import images
from onnxcam.batch import BatchOptions, run_batch
from onnxcam.image_header import read_header
from onnxcam.images import ImageError, read_image
from onnxcam.model_file import ModelFileError, open_graph
from onnxcam.onnx_scan import ProtobufError, external_locations
from onnxcam.outputs import artefact_stem, inside

# ----------------------------------------------------------------------------------------------------------- helpers


def refusal(call: Callable[[], object], path: Path, error: type[Exception] = ImageError) -> str:
    """The cause ``call()`` fails with; the message must be one line ``"<path>: <cause>"``."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """An asymmetric, JPEG-friendly colour picture: ramps in x and y plus a bright block in the top-left corner."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 7.0 + y / 11.0)], axis=-1)
    rgb[: height // 4, : width // 5] = (250, 240, 20)
    return rgb.astype(np.uint8)


def pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_file(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (filter 0 on every row); ``rows=None``: all-zero rows, compressed row by row."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
        row = bytes(1 + (width * channels * bit_depth + 7) // 8)
        packer = zlib.compressobj(9)
        idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        idat = zlib.compress(rows)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of a uint16 ``H×W`` (grey), ``H×W×3`` (RGB) or ``H×W×4`` (RGBA) array."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = array.reshape(array.shape[0], -1).astype(">u2").tobytes()
    stride = array.shape[1] * channels * 2
    raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(array.shape[0]))
    return png_file(array.shape[1], array.shape[0], 16, {1: 0, 3: 2, 4: 6}[channels], raw)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any call to OpenCV's decoder fail the test: a refusal must come from the header alone."""

    def forbidden(*_: object) -> None:
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", forbidden)


# ------------------------------------------------------------------------------------------------ broken image files


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    assert refusal(lambda: read_image(path), path) == "empty file"


@pytest.mark.parametrize(
    "text",
    [
        "Dear diary,\nthis is not a photo.\n",
        "BMW 320d, 1998, 210000 km, 2500 EUR; call after 6 pm. " * 3,  # starts like a BMP
        "RIFF\x10\x00\x00\x00AVI LIST" + "x" * 40,  # a RIFF container that is not WebP
        "P6 is a parking lot, not a Netpbm image",
    ],
)
def test_text_renamed_to_jpg(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text(text)
    assert refusal(lambda: read_image(path), path) == "not a decodable image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -2, -12])
def test_truncated_jpeg_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, keep: float) -> None:
    """Cut anywhere — in the middle, just before the end-of-image marker, inside the last chunk — is refused, even
    by a decoder that fills the missing part with grey (what OpenCV 4's JPEG reader does) instead of failing."""
    whole = pil_bytes(Image.fromarray(smooth_rgb(60, 80), "RGB"), fmt, progressive=keep == 0.5)
    cut = whole[: int(len(whole) * keep)] if keep > 0 else whole[:keep]
    assert read_header(whole).complete and not read_header(cut).complete
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(cut)
    assert refusal(lambda: read_image(path), path) == "not a decodable image"
    with monkeypatch.context() as patch:
        patch.setattr(cv2, "imdecode", lambda *_: np.full((60, 80, 3), 128, np.uint8))
        assert refusal(lambda: read_image(path), path) == "not a decodable image"
    path.write_bytes(whole + b"trailing bytes after the end")  # extra bytes after a complete image are harmless
    assert read_header(path.read_bytes()).complete and read_image(path).shape == (60, 80, 3)


def test_unreadable_path(tmp_path: Path) -> None:
    assert refusal(lambda: read_image(tmp_path / "gone.png"), tmp_path / "gone.png") == "file not found"
    assert refusal(lambda: read_image(tmp_path), tmp_path).startswith("cannot read")


# ------------------------------------------------------------------------------------------- decompression bombs


def test_png_bomb_is_refused_from_its_header(tmp_path: Path, no_decoding: None) -> None:
    """A valid 30000×30000 PNG of 0.1 MB (2.7 GB once decoded to RGB) is refused at the default limit."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_file(30000, 30000, 1, 0))
    assert path.stat().st_size < 200_000
    cause = refusal(lambda: read_image(path), path)
    assert cause == "image too large: 30000x30000 = 900 megapixels, the limit is 100 megapixels"


def test_jpeg_bomb_is_refused_from_its_frame_header(tmp_path: Path, no_decoding: None) -> None:
    """A real 16×16 JPEG whose SOF0 segment is rewritten to declare 60000×50000."""
    data = bytearray(pil_bytes(Image.fromarray(smooth_rgb(16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 50000, 60000)  # height, width
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    assert "60000x50000 = 3000 megapixels" in refusal(lambda: read_image(path), path)


FORMATS = [
    ("PNG", "RGB", {}),
    ("JPEG", "RGB", {}),
    ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "CMYK", {}),
    ("BMP", "RGB", {}),
    ("GIF", "P", {}),
    ("WEBP", "RGB", {}),  # VP8
    ("WEBP", "RGB", {"lossless": True}),  # VP8L
    ("WEBP", "RGBA", {}),  # VP8X + ALPH
    ("TIFF", "RGB", {}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("PPM", "RGB", {}),
    ("PPM", "L", {}),
]


@pytest.mark.parametrize(("fmt", "mode", "options"), FORMATS)
def test_header_size_matches_pillow(fmt: str, mode: str, options: dict) -> None:
    data = pil_bytes(Image.fromarray(smooth_rgb(23, 37)).convert(mode), fmt, **options)
    header = read_header(data)
    assert header is not None and header.complete
    assert header.size == Image.open(io.BytesIO(data)).size == (37, 23)


@pytest.mark.parametrize(("fmt", "mode", "options"), FORMATS)
def test_pixel_limit_is_checked_before_decoding_in_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, mode: str, options: dict
) -> None:
    """40×30 = 1200 pixels: refused (without decoding) at a limit of 1199, decoded at 1200; the limit is a keyword
    argument and a module constant."""
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(pil_bytes(Image.fromarray(smooth_rgb(30, 40)).convert(mode), fmt, **options))
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with monkeypatch.context() as patch:
        patch.setattr(cv2, "imdecode", lambda *_: pytest.fail("decoded"))
        cause = refusal(lambda: read_image(path, max_pixels=1199), path)
        assert cause == "image too large: 40x30 = 0.0012 megapixels, the limit is 0.001199 megapixels"
        patch.setattr(images, "MAX_PIXELS", 1199)
        assert refusal(lambda: read_image(path), path) == cause


def test_big_endian_tiff_header(tmp_path: Path) -> None:
    """A hand-written big-endian ("MM") 3×2 grey TIFF, width as LONG and height as SHORT."""
    pixels = bytes([0, 50, 100, 150, 200, 250])
    entries = [
        (256, 4, 1, 3),  # ImageWidth (LONG)
        (257, 3, 1, 2 << 16),  # ImageLength (SHORT, left-justified in the value field)
        (258, 3, 1, 8 << 16),  # BitsPerSample
        (259, 3, 1, 1 << 16),  # Compression: none
        (262, 3, 1, 1 << 16),  # PhotometricInterpretation: black is zero
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: after the directory
        (277, 3, 1, 1 << 16),  # SamplesPerPixel
        (278, 3, 1, 2 << 16),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
    ]
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHII", *e) for e in entries) + b"\0\0\0\0"
    data = b"MM\x00*" + struct.pack(">I", 8) + ifd + pixels
    assert read_header(data).size == (3, 2)
    path = tmp_path / "be.tif"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_image(path)[..., 0], np.frombuffer(pixels, np.uint8).reshape(2, 3))


def test_format_without_a_parsed_header_is_checked_after_decoding(tmp_path: Path) -> None:
    """Sun raster has no header reader here: the limit still holds, checked on the decoded size."""
    ok, encoded = cv2.imencode(".ras", smooth_rgb(30, 40))
    assert ok and read_header(encoded.tobytes()) is None
    path = tmp_path / "x.ras"
    path.write_bytes(encoded.tobytes())
    assert read_image(path).shape == (30, 40, 3)
    assert "40x30" in refusal(lambda: read_image(path, max_pixels=1000), path)


# ------------------------------------------------------------------------------------------------ pixel formats


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "RGB"])
def test_pixel_modes_match_pillow(tmp_path: Path, mode: str) -> None:
    """Grey, grey+alpha, RGBA (alpha dropped), palette and 1-bit PNGs come out as Pillow's ``convert("RGB")``."""
    rgba = np.dstack([smooth_rgb(30, 40), np.linspace(0, 255, 30 * 40).reshape(30, 40).astype(np.uint8)])
    path = tmp_path / f"{mode}.png"
    Image.fromarray(rgba if "A" in mode else rgba[..., :3]).convert(mode).save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_png(tmp_path: Path, channels: int) -> None:
    """16-bit grey, RGB and RGBA → 8 bits per channel: ``round(v / 257)`` within 1."""
    rng = np.random.default_rng(channels)
    deep = rng.integers(0, 65536, size=(12, 17, channels) if channels > 1 else (12, 17), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(png16(deep))
    rgb = read_image(path).astype(int)
    expected = np.round(deep / 257.0).astype(int)
    expected = np.repeat(expected[..., None], 3, axis=2) if channels == 1 else expected[..., :3]
    assert rgb.shape == (12, 17, 3) and np.abs(rgb - expected).max() <= 1


def test_cmyk_jpeg_colours_match_pillow(tmp_path: Path) -> None:
    """A CMYK JPEG (Adobe inverted, as Pillow writes it) comes out as Pillow's CMYK → RGB conversion, within 4."""
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(smooth_rgb(48, 64)).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    expected = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rgb = read_image(path).astype(int)
    assert rgb.shape == expected.shape and np.abs(rgb - expected).max() <= 4


@pytest.mark.parametrize(("fmt", "orientation"), [("JPEG", 3), ("JPEG", 6), ("JPEG", 8), ("PNG", 6), ("WEBP", 8)])
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str, orientation: int) -> None:
    """The photo comes out as a person sees it: equal to Pillow's ``ImageOps.exif_transpose`` (JPEG within 3)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated.{fmt.lower()}"
    Image.fromarray(smooth_rgb(40, 64)).save(path, fmt, exif=exif.tobytes(), quality=95, lossless=True)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
    assert expected.shape == ((40, 64, 3) if orientation == 3 else (64, 40, 3))
    rgb = read_image(path).astype(int)
    assert rgb.shape == expected.shape and np.abs(rgb - expected).max() <= 3


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_jpeg_decoding_keeps_orientation_size_and_picture(tmp_path: Path, orientation: int) -> None:
    """``load_image`` with a side cap decodes a 1280×640 JPEG at 1/4 scale (libjpeg's own scaled decoding: cv2.imdecode
    sees the reduced flag), reports the file's size as a person sees it, and gives the picture Pillow's
    ``exif_transpose`` + box resize gives (99 % of values within 6 grey levels, mean under 1: libjpeg's scaled IDCT
    and a box filter differ only at sharp edges)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "wide.jpg"
    Image.fromarray(smooth_rgb(640, 1280)).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    flags = []
    real = cv2.imdecode

    def spy(data: np.ndarray, flag: int) -> np.ndarray:
        flags.append(flag)
        return real(data, flag)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cv2, "imdecode", spy)
        loaded = images.load_image(path, max_side=300, min_size=(32, 32))
    assert flags == [cv2.IMREAD_REDUCED_COLOR_4]  # 320×160 still covers a 300-px artefact
    upright = (640, 1280) if orientation == 1 else (1280, 640)
    assert loaded.original_size == upright
    assert loaded.image.shape == ((150, 300, 3) if orientation == 1 else (300, 150, 3))
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize(loaded.image.shape[1::-1], Image.BOX)
    difference = np.abs(loaded.image.astype(int) - np.asarray(expected).astype(int))
    assert np.percentile(difference, 99) <= 6 and difference.mean() < 1


# ------------------------------------------------------------------------------------------------------ model files


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("gapnet") / "gap.onnx")


@pytest.fixture
def no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make creating an onnxruntime session fail the test: the refusal must come before onnxruntime reads the file."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *_, **__: pytest.fail("onnxruntime read the model"))


def save_proto(model: onnx.ModelProto, path: Path) -> Path:
    """Serialise as is (``onnx.save`` would try to write the external data itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def externalise(tensor: TensorProto, location: str, folder: Path) -> None:
    """Move ``tensor``'s data to ``folder / location`` (when that is writable) and point the tensor at it."""
    raw = numpy_helper.to_array(tensor).tobytes()
    target = Path(location) if os.path.isabs(location) else folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_symlink():
        target.write_bytes(raw)
    dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = name, dtype
    tensor.dims.extend(dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


NOT_ONNX = [np.random.default_rng(0).bytes(3000), b"name,score\ncat,0.9\n", b"", b"\x08\x07" + b"\x00" * 64]


@pytest.mark.parametrize("content", NOT_ONNX)
def test_not_an_onnx_file(tmp_path: Path, content: bytes, no_session: None) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    cause = refusal(lambda: open_graph(path), path, ModelFileError)
    assert cause.startswith("not a loadable ONNX model")


def test_plain_onnx_classifier_is_told_to_run_export(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((3 * 8 * 8, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    path = save_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "plain.onnx")
    assert "`onnxcam export`" in refusal(lambda: open_graph(path), path, ModelFileError)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "ABSOLUTE", "link.bin", "bad\0.bin"])
def test_external_data_outside_the_model_folder_is_refused(
    gapnet: Path, tmp_path: Path, location: str, no_session: None
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 1024)
    location = str(tmp_path / "secret.bin") if location == "ABSOLUTE" else location
    if location == "link.bin":
        (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    model = onnx.load(gapnet)
    externalise(model.graph.initializer[0], location.replace("\0", ""), folder)
    model.graph.initializer[0].external_data[0].value = location
    path = save_proto(model, folder / "evil.onnx")
    cause = refusal(lambda: open_graph(path), path, ModelFileError)
    assert cause.startswith(f"refused: external data location {location!r} escapes the model's folder")


def test_external_data_inside_the_model_folder_loads(gapnet: Path, tmp_path: Path) -> None:
    """The positive control: weights in a subfolder next to the model load and give the same scores."""
    model = onnx.load(gapnet)
    for tensor in model.graph.initializer[:4]:
        externalise(tensor, f"weights/{tensor.name}.bin", tmp_path)
    path = save_proto(model, tmp_path / "split.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    feeds = {"input": x, "target": np.array([-1, 3])}
    reference = open_graph(gapnet).session.run(["scores"], feeds)[0]
    np.testing.assert_array_equal(open_graph(path).session.run(["scores"], feeds)[0], reference)


def test_scan_finds_external_tensors_everywhere_they_can_hide() -> None:
    """Initializer, sparse initializer, a Constant node, a Constant inside an ``If`` branch, a function body: the
    locations written into the model by hand are exactly the ones found."""

    def tensor(location: str) -> TensorProto:
        t = numpy_helper.from_array(np.zeros(2, np.float32), location)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", location
        return t

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=tensor("in_branch.bin"))],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Constant", [], ["c"], value=tensor("in_constant.bin")),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    sparse = helper.make_sparse_tensor(tensor("sparse_values.bin"), numpy_helper.from_array(np.array([0, 1])), [4])
    graph = helper.make_graph(
        nodes,
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [tensor("initializer.bin")],
        sparse_initializer=[sparse],
    )
    function = helper.make_function(
        "local", "fn", [], ["z"], [helper.make_node("Constant", [], ["z"], value=tensor("in_function.bin"))], []
    )
    model = helper.make_model(graph, functions=[function])
    found = sorted(external_locations(model.SerializeToString()))
    expected = ["in_branch.bin", "in_branch.bin", "in_constant.bin", "in_function.bin", "initializer.bin"]
    assert found == sorted([*expected, "sparse_values.bin"])
    with pytest.raises(ProtobufError, match="past the end"):
        external_locations(b"\x0a\xff\xff\xff\x0f")  # a field claiming 4 GB


def test_declared_input_size_must_match_the_preprocessing(gapnet: Path, tmp_path: Path) -> None:
    model = onnx.load(gapnet)
    entry = next(p for p in model.metadata_props if p.key == "onnxcam.preprocess")
    entry.value = re.sub(r'"input_size": \[32, 32\]', '"input_size": [64, 48]', entry.value)
    path = save_proto(model, tmp_path / "mismatch.onnx")
    cause = refusal(lambda: open_graph(path), path, ModelFileError)
    assert cause == (
        "graph input 'input' has shape [?, 3, 32, 32] but the metadata's preprocess input_size 64x48 "
        "needs [N, 3, 64, 48]"
    )


def test_broken_metadata_is_one_line(gapnet: Path, tmp_path: Path) -> None:
    model = onnx.load(gapnet)
    entry = next(p for p in model.metadata_props if p.key == "onnxcam.preprocess")
    entry.value = entry.value.replace('"resize"', '"colour_space": "sRGB", "resize"')
    path = save_proto(model, tmp_path / "odd.onnx")
    assert "broken onnxcam metadata (TypeError" in refusal(lambda: open_graph(path), path, ModelFileError)


def test_onnxruntime_format_model_still_opens(gapnet: Path, tmp_path: Path) -> None:
    """A model saved in onnxruntime's own flatbuffer format is no protobuf, has no external data, and opens."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "gap.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    onnxruntime.InferenceSession(str(gapnet), options, providers=["CPUExecutionProvider"])
    assert open_graph(tmp_path / "gap.ort").metadata.layers == ("body.3",)


# ----------------------------------------------------------------------------------------------- output file names

NASTY = [
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\system32\\x.png",
    "\\\\server\\share\\x.png",
    "line\nbreak.png",
    "tab\tand\rreturn.png",
    "日本語の写真.png",
    "é" * 150 + ".png",
    "a" * 300 + ".jpg",
    "..",
    "...",
    "..png",
    ".hidden.png",
    "-rf.png",
    "--out=elsewhere.png",
    "~root.png",
    "$HOME.png",
    'it\'s "quoted".png',
]
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{10}")
ARTEFACT = re.compile(SAFE.pattern + r"\.(gradcam\.png|gradcam\.npy|grid\.png)")


@pytest.mark.parametrize("name", NASTY)
def test_artefact_stem_is_one_plain_name_inside_out(tmp_path: Path, name: str) -> None:
    stem = artefact_stem(name)
    assert SAFE.fullmatch(stem) and len(stem) <= 75, stem
    target = inside(tmp_path, f"{stem}.gradcam.png")
    assert target.resolve().parent == tmp_path.resolve()


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (symlinks not followed) → the hash of its content (``"dir"`` for folders)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.join(folder, name)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            found[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def test_batch_writes_only_inside_out_whatever_the_input_names(
    gapnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs named like paths, options, hidden files, with newlines, unicode and 255-byte names, reached through
    ``..``, absolute paths and a 300+-character path: every file the job creates lies in ``--out``."""
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "in"
    deep = source / ("d" * 100) / ("e" * 100) / ("f" * 100)
    deep.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    picture = pil_bytes(Image.fromarray(smooth_rgb(20, 24)), "PNG")
    names = [n for n in NASTY if "/" not in n and n not in ("..", "...") and len(n.encode()) <= 255]
    names += ["a" * 251 + ".png", "C:\\x.png"]
    for name in names:
        (source / name).write_bytes(picture)
    (deep / "deep.png").write_bytes(picture)
    (tmp_path / "elsewhere" / "x.png").write_bytes(picture)
    work = tmp_path / "work"
    out = work / "out"
    work.mkdir()
    (work / "keep.txt").write_text("untouched")
    before = tree(tmp_path)
    inputs = [
        "in",  # the folder: every name above
        "in/../elsewhere/x.png",
        str(tmp_path / "in" / ".." / "elsewhere" / "x.png"),  # the same file again, absolute: counted once
        str(deep / "deep.png"),
    ]
    assert len(str(deep / "deep.png")) > 300
    summary = run_batch(gapnet, inputs, out, BatchOptions(save=("overlay", "npy", "grid"), workers=2))
    assert summary.total == len(names) + 2 and summary.ok == summary.total
    after = tree(tmp_path)
    created = set(after) - set(before)
    assert all(Path(p).resolve().parent == out.resolve() for p in created - {str(out)}), sorted(created)
    assert {p: after[p] for p in before} == before  # nothing outside --out changed
    outputs = sorted(p.name for p in out.iterdir())
    assert len(outputs) == 1 + 3 * summary.total and "results.jsonl" in outputs
    assert all(ARTEFACT.fullmatch(n) for n in outputs if n != "results.jsonl"), outputs


# ------------------------------------------------------------------------------------------------- pickled weights


class Payload:
    """Pickles into a call of ``exec`` that writes ``marker``: what a malicious checkpoint does on a plain load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def net_source(tmp_path: Path) -> Iterator[str]:
    """A ``file.py:callable`` SOURCE building a small ``nn.Linear``."""
    module = tmp_path / "hardening_linear_net.py"
    module.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(3, 2)\n")
    yield f"{module}:build"
    sys.modules.pop("hardening_linear_net", None)


@pytest.mark.parametrize("writer", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_state_dict_with_malicious_reduce_is_refused(tmp_path: Path, net_source: str, writer: str) -> None:
    marker = tmp_path / "pwned.txt"
    state = {"weight": Payload(marker), "bias": torch.zeros(2)}
    path = tmp_path / "evil.pt"
    if writer == "pickle.dump":
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=writer == "torch.save")
    with pytest.raises(SourceError, match="cannot load weights"):
        load_module(net_source, path)
    assert not marker.exists()
    if writer == "pickle.dump":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"  # the payload is live: a plain unpickling runs it


def test_plain_state_dict_loads(tmp_path: Path, net_source: str) -> None:
    """The positive control: a tensors-only state dict loads through the same path."""
    torch.manual_seed(1)
    reference = torch.nn.Linear(3, 2)
    torch.save(reference.state_dict(), tmp_path / "good.pt")
    model = load_module(net_source, tmp_path / "good.pt")
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=0)
