"""Defects found by trying today's new work as a demanding user would (seed-path verification, models over 2 GiB,
export memory); each test failed before its fix.

The large path runs on small models with :data:`large_protos.LIMIT` patched to 0, as ``tests/test_large_protos.py``
does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxcam_export import large_protos
from onnxcam_export.errors import ExportError
from onnxcam_export.torch_capture import to_onnx
from test_large_protos import SIZE, X, gapnet, shrink

from onnxcam import contract
from onnxcam.cli import main


@pytest.fixture(scope="module")
def forward() -> onnx.ModelProto:
    """GapNet's traced forward (``scores``, ``activation:body.3``)."""
    return to_onnx(gapnet(), ["body.3"], SIZE, exporter="torchscript")


def test_small_graph_written_over_a_large_pair_removes_its_stale_weights(
    forward: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair ``m.onnx`` + ``m.onnx.data`` overwritten by a graph under the limit: the single file alone is left (the
    old weights no longer belong to any graph); a data file the old graph did not use is kept."""
    path = tmp_path / "m.onnx"
    with monkeypatch.context() as large:
        shrink(large)
        large_protos.save(forward, path)
    assert large_protos.data_path(path).is_file()
    large_protos.save(forward, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    expected = ort.InferenceSession(forward.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for a, b in zip(ours.run(None, {contract.INPUT: X}), expected.run(None, {contract.INPUT: X}), strict=True):
        np.testing.assert_array_equal(a, b)
    foreign = large_protos.data_path(path)
    foreign.write_bytes(b"someone else's weights")  # not referenced by the single file at path
    large_protos.save(forward, path)
    assert foreign.read_bytes() == b"someone else's weights"


@pytest.mark.parametrize("large", [False, True])
def test_unwritable_output_is_refused_in_one_line(
    forward: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """An output under a regular file (or any path the OS refuses) is an ExportError naming the path, no traceback."""
    if large:
        shrink(monkeypatch)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    (tmp_path / "folder").mkdir()
    for output in (blocker / "m.onnx", tmp_path / "folder"):
        with pytest.raises(ExportError, match="cannot write") as refused:
            large_protos.save(forward, output)
        message = str(refused.value)
        assert "\n" not in message and str(output) in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]  # no temporary file left


def test_cli_export_to_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    source = tmp_path / "gapnet.onnx"
    large_protos.save(to_onnx(gapnet(), [], SIZE, exporter="torchscript"), source)
    result = CliRunner().invoke(
        main, ["export", str(source), "-o", str(blocker / "m.onnx"), "--input-size", "32", "32", "--no-verify"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # click's exit
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot write"), result.output
