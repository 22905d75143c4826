"""`charrnn plot`: a run's training and validation loss and learning rate, as a PNG (store/plot.py)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .common import guarded, setup_logging


def plot(
    run: Annotated[Optional[str], typer.Argument(
        help="Run directory (or its metrics.jsonl); default: the newest run under $CHARRNN_HOME/checkpoints.",
        show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="PNG file to write (default: RUN/loss.png).", show_default=False)] = None,
):
    """Plot training and validation loss and the learning rate to a PNG (needs matplotlib, the plot extra).

    Example: charrnn plot checkpoints/my-run --output loss.png
    """
    setup_logging(False)

    def go():
        import os

        from ..store.plot import plot_run

        target = run
        if target is None:
            from ..store.checkpoint import resolve_checkpoint

            target = os.path.dirname(resolve_checkpoint(None))
        return plot_run(target, output)

    path = guarded(go)
    sys.stdout.write(path + "\n")
