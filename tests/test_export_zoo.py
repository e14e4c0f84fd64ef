"""The torchvision classification zoo, exported at its last conv block and a mid-network layer (one file, two layers).

Random-init weights (``weights=None``), eval mode; errors are ``max|ours − ref| / max|ref|`` per image, references
from independent hooks + ``torch.autograd.grad``; batch 3, targets ``[-1, 3, 998]``.

1. Exactness: the graph exported unoptimised by the TorchScript exporter (BatchNorm kept, so its weights are
   PyTorch's bit for bit), converted to float64 and evaluated by ``onnx.reference``, equals float64 autograd
   within 1e-4 for every output and image (seen: ≤ 2e-8). Gradients of ReLU/max-pool networks jump only where a
   value lies within rounding of a kink, and in float64 with identical weights none does.
2. The shipped file (optimised: BatchNorm folded into Conv in float32) passes the export's own verification (float64,
   median image ≤ 1e-4; folding moves weights by ~1e-7, which rarely flips one ReLU of one image).
3. Deployment, float32 onnxruntime CPU, N=3 and N=5 (and it runs at N=1): ``scores`` and ``activation:*`` within
   1e-4 for every image. Gradients are continuous only away from kinks: where a ReLU input or two max-pool
   candidates lie within float32 rounding of each other, onnxruntime and PyTorch take different sides (as float32
   and float64 PyTorch do between themselves). Long backward paths meet such ties in most images (seen,
   max-relative: resnet50 layer2 ≤ 6e-3, vgg16_bn features.23 5e-2, densenet121 denseblock2 0.14, inception_v3
   Mixed_5d 0.12; relative L2 ≤ 1.1e-2), short ones rarely (vgg16_bn's head has ReLUs and a max-pool: 1 image in 8).
   So: every image's gradient within ``GRADIENT_L2`` relative L2 error, and the last block's gradient within 1e-4
   for the median image; step 1 is what proves the graph right.
4. Head graphs (Ablation-CAM): fed each layer's maps, they give the full forward's scores within 1e-4.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from float64 import run_float64
from gradcheck import relative_error
from onnxcam_export.api import export_model
from onnxcam_export.sources import load_torchvision
from torch_reference import reference

TOLERANCE = 1e-4

# model, input size, [last conv block, mid-network layer]
ZOO = [
    ("resnet18", 224, ["layer4", "layer2"]),
    ("resnet50", 224, ["layer4", "layer2"]),
    ("vgg16_bn", 224, ["features.42", "features.23"]),
    ("densenet121", 224, ["features", "features.denseblock2"]),
    ("mobilenet_v2", 224, ["features.18", "features.7"]),
    ("mobilenet_v3_large", 224, ["features.16", "features.8"]),
    ("efficientnet_b0", 224, ["features.8", "features.4"]),
    ("convnext_tiny", 224, ["features.7", "features.3"]),
    ("regnet_y_400mf", 224, ["trunk_output", "trunk_output.block2"]),
    ("squeezenet1_1", 224, ["features.12", "features.6"]),
    ("shufflenet_v2_x1_0", 224, ["conv5", "stage2"]),
    ("googlenet", 224, ["inception5b", "inception3b"]),
    ("inception_v3", 299, ["Mixed_7c", "Mixed_5d"]),
    ("mnasnet1_0", 224, ["layers.16", "layers.9"]),
    ("alexnet", 224, ["features.11", "features.5"]),
]


def run(model_bytes: bytes, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, "target": target}), strict=True))


GRADIENT_L2 = 2e-2


def image_errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """``[n]`` worst relative error per image over ``keys``; ``target_used`` must match exactly."""
    np.testing.assert_array_equal(ours["target_used"], ref["target_used"])
    errors = np.zeros(len(ref["target_used"]))
    for key in keys:
        assert ours[key].shape == ref[key].shape, key
        errors = np.maximum(errors, [relative_error(ours[key][i], ref[key][i]) for i in range(len(errors))])
    return errors


def inputs(n: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, size, size, generator=generator), np.array([-1, 3, 998, -1, 7][:n], np.int64)


def check_float64(model: torch.nn.Module, explainer: onnx.ModelProto, layers: list[str], size: int) -> float:
    x, target = inputs(3, size)
    x = x.double()
    ours = run_float64(explainer, {"input": x.numpy(), "target": target})
    ref = reference(copy.deepcopy(model).double(), layers, x, target)
    errors = image_errors(ours, ref, [k for k in ref if k != "target_used"])
    assert errors.max() <= TOLERANCE, f"float64 graph vs float64 autograd, per image: {errors.tolist()}"
    return float(errors.max())


def check_float32(model: torch.nn.Module, model_bytes: bytes, layers: list[str], size: int, n: int) -> None:
    x, target = inputs(n, size)
    ours = run(model_bytes, x.numpy(), target)
    ref = reference(model, layers, x, target)
    forward = image_errors(ours, ref, ["scores", *(f"activation:{layer}" for layer in layers)])
    assert forward.max() <= TOLERANCE, f"scores/activations per image: {forward.tolist()}"
    last = image_errors(ours, ref, [f"gradient:{layers[0]}"])
    assert np.median(last) <= TOLERANCE, f"gradient:{layers[0]} per image: {last.tolist()}"
    for layer in layers:
        key = f"gradient:{layer}"
        l2 = [np.linalg.norm(ours[key][i] - ref[key][i]) / np.linalg.norm(ref[key][i]) for i in range(n)]
        assert max(l2) <= GRADIENT_L2, f"{key}: relative L2 error per image {l2}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "layers"), ZOO, ids=[z[0] for z in ZOO])
def test_zoo_gradients_match_autograd(name: str, size: int, layers: list[str]) -> None:
    torch.manual_seed(0)
    model = load_torchvision(name).eval()
    exact, _ = export_model(
        model,
        None,
        layers,
        (size, size),
        exporter="torchscript",
        optimize=False,
        verify=False,
        input_gradients=(),
        log=lambda _: None,
    )
    check_float64(model, exact, layers, size)
    shipped, report = export_model(model, None, layers, (size, size), input_gradients=(), log=lambda _: None)
    assert report is not None and report.typical <= TOLERANCE
    model_bytes = shipped.SerializeToString()
    check_float32(model, model_bytes, layers, size, n=3)
    outputs = run(model_bytes, np.zeros((1, 3, size, size), np.float32), np.array([-1], np.int64))
    assert outputs["scores"].shape == (1, 1000)
    check_float32(model, model_bytes, layers, size, n=5)
    check_heads(model_bytes, layers, size)


def check_heads(model_bytes: bytes, layers: list[str], size: int) -> None:
    """Each layer's head graph, fed the layer's maps, gives the scores of the full forward (the network before the
    layer runs on an empty batch, as ``Explainer.head_scores`` does)."""
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    full = run(model_bytes, x, np.array([-1, -1], np.int64))
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    heads = {i.name for i in session.get_overridable_initializers()}
    for layer in layers:
        if f"head:{layer}" not in heads:
            continue  # a layer some skip connection goes around has no head (export logs it)
        feeds = {
            "input": np.zeros((0, 3, size, size), np.float32),
            "target": np.zeros(0, np.int64),
            f"head:{layer}": full[f"activation:{layer}"],
            "compute:gradients": np.array(False),
            f"compute:head_scores:{layer}": np.array(True),
        }
        [scores] = session.run([f"head_scores:{layer}"], feeds)
        assert relative_error(scores, full["scores"]) <= TOLERANCE, layer
