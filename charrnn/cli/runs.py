"""`charrnn runs`: the training runs under a directory as a table or JSON (store/runs.py), or the best one's path."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .common import fail, guarded, setup_logging


def runs(
    directory: Annotated[Optional[str], typer.Argument(
        metavar="DIR", help="Directory of run directories (or one run directory); default: $CHARRNN_HOME/checkpoints.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list (with --best: the best run's object).")] = False,
    best: Annotated[bool, typer.Option("--best", help="Print only the path of best.pt of the run with the lowest best val loss among the runs trained on the newest run's corpus (or --corpus); exit 66 if there is none.")] = False,
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="With --best: compare the runs trained on this corpus (its path or file name as recorded, or its sha256).", show_default=False)] = None,
):
    """List training runs, newest first: corpus, model, the options in which the listed runs differ (lr, dropout, batch, ...), steps, training time, best val loss, state, size on disk.

    State: running (a live process holds the run's lock); finished (latest.pt says the run ended at its step limit, from its max steps or epochs, or at its time budget); interrupted (it stopped short of that: a signal, a crash, a kill or a non-finite loss); unreadable (latest.pt cannot be read).

    Example: charrnn runs checkpoints --json
    """
    setup_logging(False)
    if corpus is not None and not best:
        fail("--corpus applies to --best: pass --best, or leave --corpus out", 2)

    def go():
        from ..store.runs import list_runs

        return list_runs(directory)

    found = guarded(go)
    from ..store.paths import runs_dir

    where = directory if directory is not None else runs_dir()
    if best:
        from ..store.runs import best_run

        top = best_run(found, corpus)
        if top is None:
            on = f" trained on {corpus}" if corpus is not None else ""
            fail(f"no run{on} with a best.pt and a validation loss under {where}", 66)
        sys.stdout.write((json.dumps(top, ensure_ascii=False) if as_json else top["best"]) + "\n")
    elif as_json:
        sys.stdout.write(json.dumps(found, ensure_ascii=False) + "\n")
    elif not found:
        sys.stderr.write(f"charrnn: no runs under {where}\n")
    else:
        from rich.console import Console

        from ..store.runs import runs_table

        Console(highlight=False, width=None if sys.stdout.isatty() else 250).print(runs_table(found))
    sys.stdout.flush()
