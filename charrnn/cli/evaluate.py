"""`charrnn eval`: score text with a model (nats/char, bits/char, perplexity), or show what it learned (the views
of inference/views.py: surprisal, a hidden unit, the units that follow a pattern)."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Optional

import typer

from ..config import TOP_NEURONS, VIEW_MAX_CHARS
from .common import JsonObject, explicit, fail, guarded, setup_logging


def eval_(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory (default: the newest run under checkpoints/; a text file alone is FILE, scored by the newest run).", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Argument(
        help="Text to score, or - for stdin (default: the run's test split, else its validation split).",
        show_default=False)] = None,
    streams: Annotated[int, typer.Option(help="Score the text as N parallel pieces (faster; each starts from a zero state). 1 carries the state through the whole text.")] = 1,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop characters outside the vocabulary (and report how many) instead of failing.")] = False,
    as_json: JsonObject = False,
    show: Annotated[bool, typer.Option("--show", help="Print the text coloured by each character's surprisal in bits.", rich_help_panel="See what it learned")] = False,
    neuron: Annotated[Optional[int], typer.Option("--neuron", help="Print the text coloured by hidden unit K's activation (0-based; see --layer).", rich_help_panel="See what it learned", show_default=False)] = None,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Layer of --neuron / --top-neurons, 1-based (default: the last for --neuron, all layers for --top-neurons).", rich_help_panel="See what it learned", show_default=False)] = None,
    top_neurons: Annotated[Optional[str], typer.Option("--top-neurons", help="Rank hidden units by correlation with a pattern: quotes, single-quotes, parens, brackets, braces, line-position, uppercase, whitespace.", rich_help_panel="See what it learned", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="How many units --top-neurons lists.", rich_help_panel="See what it learned")] = TOP_NEURONS,
    html: Annotated[Optional[str], typer.Option("--html", help="Write the view (--show by default) as a self-contained HTML page to FILE instead of the terminal.", rich_help_panel="See what it learned", show_default=False)] = None,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Characters of the text to show (from its start).", rich_help_panel="See what it learned")] = VIEW_MAX_CHARS,
):
    """Measure how well a model predicts text: nats/char, bits/char and perplexity; or show what it learned.

    With one text file, the newest run scores it; otherwise the checkpoint comes first.

    Example: charrnn eval held_out.txt

    Example: charrnn eval checkpoints/my-run/best.pt held_out.txt --json

    Example: charrnn eval checkpoints/my-run held_out.txt --neuron 17 --html neuron17.html
    """
    setup_logging(False)
    checkpoint, file = _eval_arguments(checkpoint, file)
    _check_view_options(explicit(ctx), show or neuron is not None or top_neurons is not None or html is not None,
                        neuron, layer, top_neurons)
    if show or neuron is not None or top_neurons is not None or html is not None:
        if as_json:
            fail("--json reports scores; it cannot be combined with --show, --neuron, --top-neurons or --html", 2)
        _explain(checkpoint, file, show, neuron, layer, top_neurons, top, html, skip_unknown, max_chars)
        return

    def go():
        from ..inference.evaluation import evaluate

        return evaluate(checkpoint, file, streams=streams, skip_unknown=skip_unknown, progress=True)

    result = guarded(go)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        lines = [
            f"text:          {result['text']}",
            f"chars scored:  {result['chars']}",
            f"nats/char:     {result['nats_per_char']:.4f}",
            f"bits/char:     {result['bits_per_char']:.4f}",
            f"perplexity:    {result['perplexity']:.4f}",
        ]
        if result["skipped_unknown"]:
            lines.append(f"skipped:       {result['skipped_unknown']} characters not in the vocabulary")
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _is_text(path: str) -> bool:
    """Whether an argument names text rather than a model: `-` (stdin), or a file whose start reads as text (a
    checkpoint is a zip archive; a directory is a run)."""
    if path == "-":
        return True
    if not os.path.isfile(path):
        return False
    from ..store.checkpoint import _looks_like_text

    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    return bool(head) and _looks_like_text(head)


def _eval_arguments(checkpoint: Optional[str], file: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """`eval FILE` scores FILE with the newest run, as `sample`, `info` and `plot` default to it; `eval CHECKPOINT
    FILE` stays. A text file first and a second argument: the order is wrong, and the error says which it is."""
    if checkpoint is None or not _is_text(checkpoint):
        return checkpoint, file
    if file is None:
        return None, checkpoint
    fail(f"{checkpoint} is text, not a checkpoint: the checkpoint comes first (charrnn eval CHECKPOINT FILE), or "
          f"pass the text alone to score it with the newest run (charrnn eval FILE)", 2)


def _check_view_options(explicit: set, view: bool, neuron, layer, top_neurons) -> None:
    """An option given without the view (or score) it applies to is a usage error, not silently ignored."""
    if layer is not None and neuron is None and top_neurons is None:
        fail("--layer applies to --neuron and --top-neurons: pass one of them, or leave --layer out", 2)
    if "top" in explicit and top_neurons is None:
        fail("--top applies to --top-neurons: pass --top-neurons PATTERN, or leave --top out", 2)
    if "max_chars" in explicit and not view:
        fail("--max-chars applies to the views (--show, --neuron, --top-neurons, --html): pass one, or leave "
              "--max-chars out", 2)
    if "streams" in explicit and view:
        fail("--streams applies to scores; the views (--show, --neuron, --top-neurons, --html) carry one stream", 2)


def _explain(checkpoint, file, show, neuron, layer, top_neurons, top, html, skip_unknown, max_chars) -> None:
    from ..inference.views import explain, render_digits, render_rich

    result = guarded(lambda: explain(checkpoint, file, show=show, neuron=neuron, layer=layer,
                                     top_pattern=top_neurons, top=top, html_path=html, skip_unknown=skip_unknown,
                                     max_chars=max_chars))
    log = logging.getLogger("charrnn")
    inspection = result.inspection
    log.info(f"{inspection.what}: {len(inspection.text)} characters, {inspection.bits_per_char:.4f} bits/char")
    if result.ranking is not None:
        lines = [f"{'rank':>4}  {'layer':>5}  {'unit':>5}  correlation"]
        lines += [f"{i:>4}  {n.layer:>5}  {n.unit:>5}  {n.correlation:+.4f}" for i, n in enumerate(result.ranking, 1)]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    if html is not None:
        log.info(f"wrote {html} ({result.view.title})")
        return
    if result.ranking is not None:
        return
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    log.info(result.view.legend() if console.color_system and not console.no_color
             else f"{result.view.legend().split(':')[0]}: the digit under each character (no colour: NO_COLOR or "
                  f"not a terminal)")
    if console.color_system and not console.no_color:
        rendered = render_rich(result.view)
        console.print(rendered, end="" if rendered.plain.endswith("\n") else "\n")
    else:
        sys.stdout.write(render_digits(result.view))
    sys.stdout.flush()
