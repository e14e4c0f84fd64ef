"""``python -m onnxcam`` = the ``onnxcam`` command."""

from onnxcam.cli import main

main()
