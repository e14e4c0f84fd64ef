"""VJP rules, one module per family of ONNX ops; importing this package registers them all."""

from . import (  # noqa: F401
    conv,
    elementwise,
    indexing,
    linear,
    normalization,
    pooling,
    quantize,
    reduce,
    resize,
    sampling,
    shape,
)
