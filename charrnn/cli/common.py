"""What the commands share: charrnn's error handling (a user's mistake is one line on stderr and its exit code),
logging to stderr, the options' defaults read from the configs, and the arguments and options several commands
take alike.

Light on purpose (typer and the configs): every command module imports it, and `charrnn --help` imports them all.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Optional

import typer

from ..config import ModelConfig, TrainConfig, default_of
from ..errors import EXIT_SIGINT, CharrnnError, Interrupted, StartupInterrupted

_debug = False  # --debug: tracebacks instead of one-line errors (set by the app's callback)


def set_debug(debug: bool) -> None:
    global _debug
    _debug = debug


def model_default(name):
    return default_of(ModelConfig, name)


def train_default(name):
    return default_of(TrainConfig, name)


def speaks() -> bool:
    """Whether this process prints errors: under torchrun every rank meets the same mistake, and rank 0 alone says
    it (RANK unset: not under torchrun)."""
    return os.environ.get("RANK", "0") == "0"


RANK_ZERO_WAIT = 5.0  # seconds a quiet torchrun rank gives rank 0 to say the error both met


def fail(message: str, code: int):
    if speaks():
        sys.stderr.write(f"charrnn: error: {message}\n")
        sys.stderr.flush()
    else:
        let_rank_zero_speak()
    raise typer.Exit(code)


def let_rank_zero_speak() -> None:
    """Under torchrun, a rank other than 0 about to exit with the error every rank met waits a moment first: torchrun
    stops all ranks when the first one exits, which could be before rank 0 has said it. Rank 0's exit ends the
    wait (torchrun stops this rank then, with the signal's default action: this rank has nothing left to save)."""
    import signal
    import time

    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: its handlers stay
        pass
    time.sleep(RANK_ZERO_WAIT)


def setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("charrnn")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("charrnn: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)  # --quiet: errors only
    logger.propagate = False


def guarded(fn):
    """Call fn, turning a user's mistake into one line on stderr and its exit code."""
    try:
        return fn()
    except (Interrupted, StartupInterrupted) as exc:
        if exc.message and speaks():  # under torchrun only rank 0 speaks
            sys.stderr.write(f"charrnn: {exc.message}\n")
        raise typer.Exit(exc.exit_code)
    except CharrnnError as exc:
        if _debug:
            raise
        if not exc.message:  # another torchrun rank's copy of rank 0's error: rank 0 prints it
            let_rank_zero_speak()
            raise typer.Exit(exc.exit_code)
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        if _debug:
            raise
        if speaks():
            sys.stderr.write("charrnn: interrupted\n")
        raise typer.Exit(EXIT_SIGINT)


def explicit(ctx: typer.Context) -> set:
    """The names of the options the user set on purpose (on the command line or through the environment)."""
    names = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            names.add(name)
    return names


# ----------------------------------------------------------------------------------------------------------------
# arguments and options that more than one command takes, word for word

Checkpoint = Annotated[Optional[str], typer.Argument(
    help="Checkpoint file or run directory (default: the newest run under checkpoints/).", show_default=False)]

JsonObject = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
