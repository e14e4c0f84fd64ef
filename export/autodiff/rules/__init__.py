"""VJP rules, one module per family of ONNX ops; importing this package registers them all."""

from . import conv, elementwise, indexing, linear, normalization, pooling, reduce, resize, sampling, shape  # noqa: F401
