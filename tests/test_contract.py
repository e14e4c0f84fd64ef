"""The contract's metadata: files written by version 1 (before score kinds, input descriptions, layer layouts and
detectors) still read, with version 1's meaning; an unknown version is refused in one line."""

import json

import pytest

from onnxcam import contract

#: ``metadata_props`` exactly as onnxcam 0.1.0 (contract version 1) wrote them for the demo model.
VERSION_1 = {
    "onnxcam.contract_version": "1",
    "onnxcam.layers": json.dumps(["_bn1"]),
    "onnxcam.preprocess": json.dumps(
        {
            "input_size": [224, 224],
            "mean": [0.498, 0.498, 0.498],
            "std": [0.502, 0.502, 0.502],
            "channel_order": "RGB",
            "value_scale": 1 / 255,
            "resize": "bilinear",
        }
    ),
    "onnxcam.source": "models/efficientnet_lite0.py:build",
    "onnxcam.exporter": "onnxcam 0.1.0",
    "onnxcam.scores_kind": "logits",
    "onnxcam.input_gradients": "[]",
    "onnxcam.heads": json.dumps(["_bn1"]),
}


def test_version_1_file_reads_with_its_meaning() -> None:
    meta = contract.Metadata.from_props(VERSION_1)
    p = meta.preprocess
    assert meta.version == "1" and meta.layers == ("_bn1",) and meta.heads == ("_bn1",)
    assert (p.channels, p.input_dtype, p.input_layout, p.channel_order) == (3, "float32", "NCHW", "RGB")
    assert p.input_size == (224, 224) and p.mean == (0.498, 0.498, 0.498)
    assert meta.scores_kind == "logits" and meta.detection is None and meta.layouts == {}
    assert meta.layout("_bn1").kind == "nchw"


def test_written_metadata_round_trips_at_the_current_version() -> None:
    meta = contract.Metadata.from_props(VERSION_1)
    current = contract.Metadata(layers=meta.layers, preprocess=meta.preprocess, heads=meta.heads)
    props = current.to_props()
    assert props[contract.META_VERSION] == contract.CONTRACT_VERSION == "2"
    assert contract.Metadata.from_props(props) == current


def test_unknown_version_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"contract version 9, this onnxcam reads 1, 2: upgrade onnxcam") as err:
        contract.Metadata.from_props({**VERSION_1, "onnxcam.contract_version": "9"})
    assert "\n" not in str(err.value)
