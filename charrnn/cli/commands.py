"""The command line: parse options, build configs, call one library function, print.

stdout carries only generated text (`sample`) and results (`eval`); progress, logs and errors go to stderr.
A user's mistake is one line on stderr and a documented exit code (see README "Exit codes"); `--debug` shows
the traceback instead. torch is imported only inside commands, so `--help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Optional

import typer

from ..training import report  # light: rich is imported only when the summary is printed
from ..config import (TOP_NEURONS, VIEW_MAX_CHARS, ModelConfig, TrainConfig, default_of, parse_dropout,
                      parse_duration, parse_val_chars)
from ..errors import EXIT_SIGINT, CharrnnError, Interrupted, StartupInterrupted

app = typer.Typer(
    name="charrnn",
    help="Train character-level RNN language models, sample text from them, and measure them.",
    add_completion=True,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = False


def _flags_show_no_type() -> None:
    """Typer (0.29) labels every flag, --help included, `<bool>` in --help, as if it took a value: a flag shows no
    type, like the flag it is."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "charrnn_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    display_type_rich.charrnn_flags = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _m(name):
    return default_of(ModelConfig, name)


def _t(name):
    return default_of(TrainConfig, name)


def _speaks() -> bool:
    """Whether this process prints errors: under torchrun every rank meets the same mistake, and rank 0 alone says
    it (RANK unset: not under torchrun)."""
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int):
    if _speaks():
        sys.stderr.write(f"charrnn: error: {message}\n")
        sys.stderr.flush()
    raise typer.Exit(code)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("charrnn")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("charrnn: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)  # --quiet: errors only
    logger.propagate = False


def _run(fn):
    """Call fn, turning a user's mistake into one line on stderr and its exit code."""
    try:
        return fn()
    except (Interrupted, StartupInterrupted) as exc:
        if exc.message:  # under torchrun only rank 0 speaks
            sys.stderr.write(f"charrnn: {exc.message}\n")
        raise typer.Exit(exc.exit_code)
    except CharrnnError as exc:
        if _debug:
            raise
        if not exc.message:  # another torchrun rank's copy of rank 0's error: rank 0 printed it
            raise typer.Exit(exc.exit_code)
        _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        if _debug:
            raise
        if _speaks():
            sys.stderr.write("charrnn: interrupted\n")
        raise typer.Exit(EXIT_SIGINT)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"charrnn {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
):
    global _debug
    _debug = debug


def _explicit(ctx: typer.Context) -> set:
    names = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            names.add(name)
    return names


def _command_started() -> float:
    """When this process started, on time.perf_counter's clock (a --time-budget counts Python's and the imports'
    start-up too); now, where /proc cannot say."""
    import time

    return time.perf_counter() - (report.process_age() or 0.0)


@app.command()
def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Argument(
        help="Text file, directory of files (see --glob), - for stdin, a named corpus (see `charrnn corpora`), "
             "or an http(s) URL (downloaded once into $CHARRNN_HOME/data). Omit it to train on a built-in demo "
             "corpus (Python standard library source).", show_default=False)] = None,
    # model
    cell: Annotated[str, typer.Option(help="Recurrent cell: tanh, gru or lstm.", rich_help_panel="Model")] = _m("cell"),
    hidden_size: Annotated[int, typer.Option(help="Hidden units per layer. For tanh with --time-budget and neither size option given, the size is chosen for the budget on this machine.", rich_help_panel="Model")] = _m("hidden_size"),
    num_layers: Annotated[int, typer.Option(help="Stacked recurrent layers.", rich_help_panel="Model")] = _m("num_layers"),
    dropout: Annotated[str, typer.Option(help="Dropout between layers and before the head: a rate in [0, 1), or auto (0.005 per pass over the training split the run will make, at most 0.2; with --time-budget, decided from the speed of the first steps).", rich_help_panel="Model")] = "auto",
    recurrent_init: Annotated[str, typer.Option(help="tanh cell's W_hh at initialisation: KIND[:GAIN], KIND orthogonal, identity or uniform (torch's nn.RNN default).", rich_help_panel="Model")] = _m("recurrent_init"),
    # data
    val_frac: Annotated[float, typer.Option(help="Fraction of the corpus held out for validation (after train).", rich_help_panel="Data")] = _t("val_frac"),
    test_frac: Annotated[float, typer.Option(help="Fraction held out for testing (the end of the corpus).", rich_help_panel="Data")] = _t("test_frac"),
    glob: Annotated[str, typer.Option(help="Files to read when CORPUS is a directory.", rich_help_panel="Data")] = _t("glob"),
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Also read the files of symlinked directories inside a CORPUS directory (a file reached twice is read once either way).", rich_help_panel="Data")] = _t("follow_links"),
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of the corpus (checked after a URL download, or of a local file); a mismatch is an error.", rich_help_panel="Data")] = None,
    batch_size: Annotated[int, typer.Option(help="B: parallel streams per batch.", rich_help_panel="Data")] = _t("batch_size"),
    seq_len: Annotated[int, typer.Option(help="T: steps of back-propagation through time per batch.", rich_help_panel="Data")] = _t("seq_len"),
    # optimisation
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).", rich_help_panel="Optimisation")] = _t("lr"),
    min_lr_frac: Annotated[float, typer.Option(help="Cosine decay ends at lr times this.", rich_help_panel="Optimisation")] = _t("min_lr_frac"),
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.", rich_help_panel="Optimisation")] = _t("warmup_steps"),
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices.", rich_help_panel="Optimisation")] = _t("weight_decay"),
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this; 0 disables.", rich_help_panel="Optimisation")] = _t("grad_clip"),
    ema: Annotated[float, typer.Option(help="Validate, sample and save a moving average of the weights with this decay per step (about the last 1/(1 - EMA) steps); 0: the weights as trained.", rich_help_panel="Optimisation")] = _t("ema"),
    # stopping
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.", rich_help_panel="When to stop")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the training split (default 10 if no limit is given).", rich_help_panel="When to stop")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Wall time for the whole command (start-up and the final validation and save included): seconds, or 90s, 5m, 1h. The schedule decays over it; on resume it counts the earlier training time.", rich_help_panel="When to stop")] = None,
    # running
    eval_every: Annotated[int, typer.Option(help="Evaluate on the validation split and save every N steps.", rich_help_panel="Run")] = _t("eval_every"),
    val_chars: Annotated[str, typer.Option(help="Characters of the validation split each evaluation scores, in evenly spaced windows (the same each time): a number, all (the whole split), or auto (a quarter of the characters trained between evaluations, 250,000 to 2,000,000).", rich_help_panel="Run")] = "auto",
    log_every: Annotated[int, typer.Option(help="Write a metrics.jsonl row (and, when stderr is not a terminal, a progress line) every N steps.", rich_help_panel="Run")] = _t("log_every"),
    sample_every: Annotated[Optional[int], typer.Option(help="Show a short sample (200 characters, fixed seed) every N steps and append it to samples.txt in the run directory; 0 turns samples off (default: at each evaluation).", rich_help_panel="Run", show_default=False)] = _t("sample_every"),
    save_every: Annotated[Optional[str], typer.Option(help="Also save latest.pt every N steps (500) or every so often (90s, 10m, 1h); default: at each evaluation.", rich_help_panel="Run", show_default=False)] = _t("save_every"),
    keep_last: Annotated[int, typer.Option(help="Also keep the N newest step-XXXXXXXX.pt checkpoints (0: only latest.pt and best.pt).", rich_help_panel="Run")] = _t("keep_last"),
    on_nonfinite: Annotated[str, typer.Option(help="On a NaN/Inf loss or gradient: stop (exit 1, checkpoints untouched) or skip the step.", rich_help_panel="Optimisation")] = _t("on_nonfinite"),
    schedule_steps: Annotated[Optional[int], typer.Option(help="Decay the learning rate over this many steps (default: the step limit); fix it to stop early and continue later with --resume unchanged.", rich_help_panel="Optimisation", show_default=False)] = _t("schedule_steps"),
    seed: Annotated[int, typer.Option(help="Random seed (weights, dropout).", rich_help_panel="Run")] = _t("seed"),
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel="Run")] = _t("device"),
    kernel: Annotated[str, typer.Option(help="tanh cell implementation: auto (fused on CPU, torch's RNN on GPU), fused or nn.", rich_help_panel="Run")] = _t("kernel"),
    precision: Annotated[str, typer.Option(help="auto (CPU: bf16 products on CPUs with bf16 instructions for width >= 256; else fp32, on CUDA with cuDNN's TF32), fp32, bf16 or fp16 (CUDA, with loss scaling).", rich_help_panel="Run")] = _t("precision"),
    run_dir: Annotated[Optional[str], typer.Option(help="Where checkpoints and metrics go (default: a new checkpoints/NAME-TIME).", rich_help_panel="Run", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="NAME of the new run directory checkpoints/NAME-TIME (default: the corpus's name), e.g. lr-0.003 in a sweep.", rich_help_panel="Run", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this directory or checkpoint file.", rich_help_panel="Run")] = None,
    allow_lr_change: Annotated[bool, typer.Option("--allow-lr-change", help="With --resume: accept a changed --lr, --min-lr-frac, --warmup-steps, --schedule-steps or --grad-clip.", rich_help_panel="Run")] = False,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="With --time-budget and no size given: time the candidate sizes again instead of reading their speeds from $CHARRNN_HOME/speeds.json (kept there when steady).", rich_help_panel="Run")] = False,
    no_memory_check: Annotated[bool, typer.Option("--no-memory-check", help="Train even when the model, its optimizer state and one batch look too big for the memory available (refused by default, with the estimate).", rich_help_panel="Run")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or messages; errors only.", rich_help_panel="Run")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="Read options from this TOML file (keys are the option names with underscores, e.g. hidden_size = 256); options on the command line win.", rich_help_panel="Config file")] = None,
    save_config: Annotated[Optional[str], typer.Option("--save-config", help="Write the effective configuration (defaults < --config file < options) to this TOML file and exit without training.", rich_help_panel="Config file")] = None,
):
    """Train a character-level RNN on a text corpus.

    Example: charrnn train shakespeare --time-budget 5m
    """
    _setup_logging(quiet)

    def go():
        from .configfile import save_config as write_config, settle_configs
        from ..training.launch import train as train_fn

        model_config = ModelConfig(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                                   dropout=parse_dropout(dropout), recurrent_init=recurrent_init)
        train_config = TrainConfig(
            val_frac=val_frac, test_frac=test_frac, glob=glob, batch_size=batch_size, seq_len=seq_len, lr=lr,
            min_lr_frac=min_lr_frac, warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
            max_steps=max_steps, epochs=epochs, time_budget=parse_duration(time_budget), eval_every=eval_every,
            log_every=log_every, seed=seed, device=device, kernel=kernel, precision=precision,
            sample_every=sample_every, val_chars=parse_val_chars(val_chars),
            save_every=save_every, keep_last=keep_last, schedule_steps=schedule_steps, on_nonfinite=on_nonfinite,
            follow_links=follow_links, ema=ema,
        )
        # defaults < --config file < options, every number checked before anything is created or downloaded
        explicit = settle_configs(model_config, train_config, config, _explicit(ctx))
        if save_config is not None:
            return write_config(save_config, model_config, train_config, explicit)
        # the corpus is resolved (downloaded, hashed for --sha256) after the run directory is locked
        return train_fn(corpus, model_config, train_config, run_dir=run_dir, resume=resume, explicit=explicit,
                        progress=not quiet, allow_lr_change=allow_lr_change, memory_check=not no_memory_check,
                        started=_command_started(), name=name, remeasure=remeasure, sha256=sha256)

    from ..training.launch import startup_signals

    with startup_signals():  # until the loop's own handlers: a signal stops start-up at once, with one line
        _train_done(_run(go), save_config, quiet)


def _train_done(result, save_config: Optional[str], quiet: bool) -> None:
    if save_config is not None:
        logging.getLogger("charrnn").info(f"wrote {result}: train with `charrnn train CORPUS --config {result}`")
    elif not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone sums up
        report.print_summary(result)


@app.command()
def sample(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory (default: the newest run under checkpoints/).", show_default=False)] = None,
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
    _setup_logging(False)
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
        _run(go)
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


@app.command(name="eval")
def eval_(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory (default: the newest run under checkpoints/; a text file alone is FILE, scored by the newest run).", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Argument(
        help="Text to score, or - for stdin (default: the run's test split, else its validation split).",
        show_default=False)] = None,
    streams: Annotated[int, typer.Option(help="Score the text as N parallel pieces (faster; each starts from a zero state). 1 carries the state through the whole text.")] = 1,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop characters outside the vocabulary (and report how many) instead of failing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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
    _setup_logging(False)
    checkpoint, file = _eval_arguments(checkpoint, file)
    _check_view_options(_explicit(ctx), show or neuron is not None or top_neurons is not None or html is not None,
                        neuron, layer, top_neurons)
    if show or neuron is not None or top_neurons is not None or html is not None:
        if as_json:
            _fail("--json reports scores; it cannot be combined with --show, --neuron, --top-neurons or --html", 2)
        _explain(checkpoint, file, show, neuron, layer, top_neurons, top, html, skip_unknown, max_chars)
        return

    def go():
        from ..inference.evaluation import evaluate

        return evaluate(checkpoint, file, streams=streams, skip_unknown=skip_unknown, progress=True)

    result = _run(go)
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
    _fail(f"{checkpoint} is text, not a checkpoint: the checkpoint comes first (charrnn eval CHECKPOINT FILE), or "
          f"pass the text alone to score it with the newest run (charrnn eval FILE)", 2)


def _check_view_options(explicit: set, view: bool, neuron, layer, top_neurons) -> None:
    """An option given without the view (or score) it applies to is a usage error, not silently ignored."""
    if layer is not None and neuron is None and top_neurons is None:
        _fail("--layer applies to --neuron and --top-neurons: pass one of them, or leave --layer out", 2)
    if "top" in explicit and top_neurons is None:
        _fail("--top applies to --top-neurons: pass --top-neurons PATTERN, or leave --top out", 2)
    if "max_chars" in explicit and not view:
        _fail("--max-chars applies to the views (--show, --neuron, --top-neurons, --html): pass one, or leave "
              "--max-chars out", 2)
    if "streams" in explicit and view:
        _fail("--streams applies to scores; the views (--show, --neuron, --top-neurons, --html) carry one stream", 2)


def _explain(checkpoint, file, show, neuron, layer, top_neurons, top, html, skip_unknown, max_chars) -> None:
    from ..inference.views import explain, render_digits, render_rich

    result = _run(lambda: explain(checkpoint, file, show=show, neuron=neuron, layer=layer, top_pattern=top_neurons,
                                  top=top, html_path=html, skip_unknown=skip_unknown, max_chars=max_chars))
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


@app.command()
def corpora(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
):
    """List the named corpora `charrnn train NAME` downloads, and whether each is cached.

    Example: charrnn corpora
    """
    from ..data.corpora import list_corpora

    rows = list_corpora()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    lines = []
    for row in rows:
        state = "cached" if row["cached"] else "not downloaded yet"
        lines.append(f"{row['name']:<14} {row['description']}")
        lines.append(f"{'':<14} {row['size']:,} bytes, sha256 {row['sha256']}")
        lines.append(f"{'':<14} {row['url']}")
        lines.append(f"{'':<14} {row['path']} ({state})")
    sys.stdout.write("\n".join(lines) + "\n")


@app.command()
def plot(
    run: Annotated[Optional[str], typer.Argument(
        help="Run directory (or its metrics.jsonl); default: the newest run under $CHARRNN_HOME/checkpoints.",
        show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="PNG file to write (default: RUN/loss.png).", show_default=False)] = None,
):
    """Plot training and validation loss and the learning rate to a PNG (needs matplotlib, the plot extra).

    Example: charrnn plot checkpoints/my-run --output loss.png
    """
    _setup_logging(False)

    def go():
        import os

        from ..store.plot import plot_run

        target = run
        if target is None:
            from ..store.checkpoint import resolve_checkpoint

            target = os.path.dirname(resolve_checkpoint(None))
        return plot_run(target, output)

    path = _run(go)
    sys.stdout.write(path + "\n")


@app.command()
def info(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory; default: the newest run under $CHARRNN_HOME/checkpoints.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Show what a checkpoint holds: architecture, parameters, vocabulary, steps, best val loss, corpus, torch.

    Example: charrnn info checkpoints/my-run/best.pt --json
    """
    _setup_logging(False)

    def go():
        from ..store.info import checkpoint_info

        return checkpoint_info(checkpoint)

    result = _run(go)
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        from ..store.info import format_info

        sys.stdout.write(format_info(result))
    sys.stdout.flush()


@app.command()
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
    _setup_logging(False)
    if corpus is not None and not best:
        _fail("--corpus applies to --best: pass --best, or leave --corpus out", 2)

    def go():
        from ..store.runs import list_runs

        return list_runs(directory)

    found = _run(go)
    from ..store.paths import runs_dir

    where = directory if directory is not None else runs_dir()
    if best:
        from ..store.runs import best_run

        top = best_run(found, corpus)
        if top is None:
            on = f" trained on {corpus}" if corpus is not None else ""
            _fail(f"no run{on} with a best.pt and a validation loss under {where}", 66)
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


@app.command()
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
    _setup_logging(False)

    def go():
        from ..export.command import export_model

        return export_model(checkpoint, fmt, output, force)

    for path in _run(go):
        sys.stderr.write(f"charrnn: wrote {path}\n")
    sys.stderr.flush()


@app.command()
def serve(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory (default: the newest run under checkpoints/).", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface (set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one (the start-up line names it).")] = 8080,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHARRNN_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics.")] = None,
    max_streams: Annotated[int, typer.Option(help="Rows generated together (one per choice); more requests wait in the queue.")] = 16,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a row; beyond that, 429.")] = 64,
    max_chars: Annotated[int, typer.Option(help="Largest max_tokens (characters) a request may ask for.")] = 4096,
    watch: Annotated[bool, typer.Option("--watch", help="Reload the checkpoint when training replaces it (streams in flight go on).")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the model (default: torch's and numba's own).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the API (default: the run directory's name).")] = None,
):
    """Serve a model over HTTP: an OpenAI-compatible API, a page to try it, metrics (see docs/serve.md).

    Example: charrnn serve checkpoints/my-run --port 8080, then open http://127.0.0.1:8080/
    """
    _setup_logging(False)

    def go():
        from ..serve.server import serve as serve_fn

        serve_fn(checkpoint, host=host, port=port, api_key=api_key, max_streams=max_streams, max_queue=max_queue,
                 max_chars=max_chars, watch=watch, device=device, threads=threads, name=name)

    _run(go)


def main() -> None:
    # Results are UTF-8 whatever the locale (LANG=C, PYTHONIOENCODING=ascii): a file name or text in the output
    # must never end the run with UnicodeEncodeError.
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        try:
            sys.stdout.reconfigure(encoding="utf-8")
        except (AttributeError, ValueError):
            pass  # not a TextIOWrapper (embedded): leave it
    try:
        result = app(prog_name="charrnn", standalone_mode=False)
    except Exception as exc:  # click's own usage errors: an unknown option, an extra argument, a bad type
        # Typer 0.29 raises the exceptions of the click it carries inside, older Typers click's: known by name
        kinds = {kind.__name__ for kind in type(exc).__mro__}
        if "ClickException" not in kinds:
            raise
        if "NoArgsIsHelpError" in kinds:  # `charrnn` alone: the help, as usage (exit 2)
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        sys.exit(_usage_error(exc))
    except typer.Abort:
        sys.stderr.write("charrnn: interrupted\n")
        sys.exit(EXIT_SIGINT)
    sys.exit(result if isinstance(result, int) else 0)


def _usage_error(exc) -> int:
    """A usage error click found, in charrnn's form: `charrnn: error: MESSAGE` and at most one line more, the
    command's usage (not Typer's boxed panel). Returns the exit code (2)."""
    message = " ".join(exc.format_message().split())
    if _speaks():
        ctx = getattr(exc, "ctx", None)
        hint = ""
        if ctx is not None:
            usage = " ".join(ctx.get_usage().split())
            usage = usage[len("Usage: "):] if usage.startswith("Usage: ") else usage
            hint = f"usage: {usage} (see {ctx.command_path} --help)\n"
        sys.stderr.write(f"charrnn: error: {message}\n{hint}")
        sys.stderr.flush()
    return exc.exit_code


if __name__ == "__main__":
    main()
