"""`charrnn sample`: generate text from a trained model, streamed to stdout as it is made."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from .common import Checkpoint, guarded, setup_logging


def sample(
    checkpoint: Checkpoint = None,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate after the prime.")] = 1000,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Softmax temperature, 0.001 to 10: lower is more conservative; 0 always takes the most likely character (no randomness).")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only from the k most likely characters.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Sample only from the smallest set of characters whose probability reaches p.")] = None,
    prime: Annotated[str, typer.Option(help="Text to start from (printed first).")] = "",
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Independent samples, generated together, separated by a blank line.")] = 1,
    no_newline: Annotated[bool, typer.Option("--no-newline", help="Do not end the output with a newline (one is added when the text does not already end with one).")] = False,
):
    """Generate text from a trained model; it streams to stdout.

    Example: charrnn sample checkpoints/my-run --temperature 0.8 --length 500 --seed 1
    """
    setup_logging(False)
    out = sys.stdout.buffer
    last = ["\n"]  # the last character written (nothing written: no line to end)

    def write(text: str) -> None:
        if text:
            out.write(text.encode("utf-8"))
            out.flush()
            last[0] = text[-1]

    def go():
        from ..inference.sampling import sample as sample_fn

        sample_fn(checkpoint, length=length, temperature=temperature, top_k=top_k, top_p=top_p, prime=prime,
                  seed=seed, num_samples=num_samples, write=write)

    try:
        guarded(go)
        if not no_newline and last[0] != "\n":  # a shell prompt or the next loop's sample starts on its own line
            write("\n")
    except BrokenPipeError:
        _quiet_broken_pipe()


def _quiet_broken_pipe() -> None:
    """The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    raise typer.Exit(0)
