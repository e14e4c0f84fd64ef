"""onnxcam: CAM-family explanations on onnxruntime, numpy and OpenCV alone (never torch)."""

__version__ = "0.1.0"
