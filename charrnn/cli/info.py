"""`charrnn info`: what a checkpoint holds (store/info.py), as text or one JSON object."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .common import JsonObject, guarded, setup_logging


def info(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory; default: the newest run under $CHARRNN_HOME/checkpoints.",
        show_default=False)] = None,
    as_json: JsonObject = False,
):
    """Show what a checkpoint holds: architecture, parameters, vocabulary, steps, best val loss, corpus, torch.

    Example: charrnn info checkpoints/my-run/best.pt --json
    """
    setup_logging(False)

    def go():
        from ..store.info import checkpoint_info

        return checkpoint_info(checkpoint)

    result = guarded(go)
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        from ..store.info import format_info

        sys.stdout.write(format_info(result))
    sys.stdout.flush()
