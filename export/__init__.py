"""onnxcam export stage: PyTorch model or ONNX file → explainer graph with exact gradients (needs torch + onnx)."""
