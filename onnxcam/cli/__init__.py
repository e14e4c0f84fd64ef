"""The ``onnxcam`` command line: one click group, one module per command (imported only when run)."""

from __future__ import annotations

from typing import ClassVar

import click

from .. import __version__


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so ``onnxcam --help`` and ``info`` stay light."""

    COMMANDS: ClassVar[dict[str, tuple[str, str]]] = {
        "compare": ("onnxcam.cli.compare_cmd", "compare"),
        "detect": ("onnxcam.cli.detect_cmd", "detect"),
        "evaluate": ("onnxcam.cli.evaluate_cmd", "evaluate"),
        "explain": ("onnxcam.cli.explain_cmd", "explain"),
        "export": ("onnxcam.cli.export_cmd", "export"),
        "info": ("onnxcam.cli.info_cmd", "info"),
        "maps": ("onnxcam.cli.maps_cmd", "maps"),
        "visualize": ("onnxcam.cli.visualize_cmd", "visualize"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.COMMANDS:
            return None
        import importlib

        module, attr = self.COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="onnxcam")
def main() -> None:
    """Explain image models with CAM-family heat maps on onnxruntime (no PyTorch at run time)."""
