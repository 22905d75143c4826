"""`charrnn export`: a trained model in a form that runs without charrnn (export/: safetensors, ONNX, a web page)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .common import guarded, setup_logging


def export(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file, run directory or .safetensors file (default: the newest run under checkpoints/).",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="safetensors (one file), onnx (a directory: step.onnx and prefill.onnx) or web (a directory to serve).", show_default=False)] = ...,
    output: Annotated[str, typer.Option("--output", "-o", help="The file (safetensors) or directory (onnx, web) to write.", show_default=False)] = ...,
    force: Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")] = False,
):
    """Write a trained model in a form that runs without charrnn: safetensors, ONNX, or a web page.

    Example: charrnn export checkpoints/my-run --format onnx -o my-run-onnx
    """
    setup_logging(False)

    def go():
        from ..export.command import export_model

        return export_model(checkpoint, fmt, output, force)

    for path in guarded(go):
        sys.stderr.write(f"charrnn: wrote {path}\n")
    sys.stderr.flush()
