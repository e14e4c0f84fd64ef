"""ONNX-level reverse-mode differentiation: a VJP rule per op type (``rules/``) and the engine that chains them."""
