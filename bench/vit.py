"""A vision transformer next to the CNN rows: Grad-CAM vs the plain forward vs pytorch-grad-cam (CPU).

Random-init torchvision ViT-B/16 at 224² (its zero-initialised head gets small random weights), the default layer
``encoder.layers.encoder_layer_11.ln_1`` (tokens ``[N, 1 + 14×14, 768]``, laid out as ``[N, 768, 14, 14]`` inside the
graph), the ``dynamo`` exporter (the TorchScript tracer cannot trace its fused attention), pytorch-grad-cam with the
``reshape_transform`` of its ViT example. Few runs: the CPU is shared, so the figures are rough.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import Table, fmt, median_seconds, ratio
from workers import inputs

ARCH, LAYER = "vit_b_16", "encoder.layers.encoder_layer_11.ln_1"
HEADERS = ["model", "layer", "batch", "ORT forward", "onnxcam Grad-CAM", "pytorch-grad-cam", "torch eager"]
HEADERS += ["onnxcam / ORT", "onnxcam / pgc"]


def _model():
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(ARCH, weights=None).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)
    return model


def _tokens_to_map(t):
    return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)


def vit_table(threads: int, runs: int, batches: tuple[int, ...], log: Callable[[str], None]) -> Table:
    """Images/s of the ORT forward, onnxcam Grad-CAM, pytorch-grad-cam and torch eager on ViT-B/16."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxcam_export.api import export_model
    from onnxcam_export.torch_capture import to_onnx
    from pytorch_grad_cam import GradCAM

    from onnxcam.explainer import Explainer
    from onnxcam.providers import session_options

    table = Table(
        "Vision transformer (CPU)",
        HEADERS,
        note=f"Images per second (higher is better); median of {runs} runs after 1 warm-up. Few runs on a shared CPU "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start): rough figures.",
    )
    model = _model()
    with tempfile.TemporaryDirectory(prefix="onnxcam-bench-vit-") as tmp:
        plain, path = Path(tmp) / "plain.onnx", Path(tmp) / "vit.onnx"
        log(f"  exporting {ARCH} …")
        onnx.save_model(to_onnx(model, [], (224, 224), exporter="dynamo"), str(plain))
        export_model(model, path, [LAYER], exporter="dynamo", verify=False, log=log)
        session = ort.InferenceSession(str(plain), session_options(threads), providers=["CPUExecutionProvider"])
        explainer = Explainer(path, provider="cpu", threads=threads)
        for batch in batches:
            x = inputs(batch)
            xt = torch.from_numpy(x)

            def speed(fn: Callable[[], object], batch: int = batch) -> float:
                return batch / median_seconds(fn, 1, runs)

            def eager(xt: torch.Tensor = xt) -> None:
                with torch.no_grad():
                    model(xt)

            layer = [model.get_submodule(LAYER)]
            with GradCAM(model=model, target_layers=layer, reshape_transform=_tokens_to_map) as cam:
                pgc = speed(lambda cam=cam, xt=xt: cam(input_tensor=xt, targets=None))
            s = {
                "ort": speed(lambda x=x: session.run(None, {"input": x})),
                "onnxcam": speed(lambda x=x: explainer.explain_arrays(x, methods=["gradcam"])),
                "pgc": pgc,
                "torch": speed(eager),
            }
            table.add(
                ARCH,
                LAYER,
                batch,
                *(fmt(s[k], 2) for k in ("ort", "onnxcam", "pgc", "torch")),
                fmt(ratio(s["onnxcam"], s["ort"]), 2, "×"),
                fmt(ratio(s["onnxcam"], s["pgc"]), 1, "×"),
            )
    return table
