"""`charrnn train`: the options, read into a ModelConfig and a TrainConfig (defaults < --config file < options),
then training.launch.train; its summary at the end (training/report.py)."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Optional

import typer

from ..config import ModelConfig, TrainConfig, parse_dropout, parse_duration, parse_val_chars
from ..training import report  # light: rich is imported only when the summary is printed
from .common import explicit, guarded, model_default, setup_logging, train_default


def _command_started() -> float:
    """When this process started, on time.perf_counter's clock (a --time-budget counts Python's and the imports'
    start-up too); now, where /proc cannot say."""
    import time

    return time.perf_counter() - (report.process_age() or 0.0)


def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Argument(
        help="Text file, directory of files (see --glob), - for stdin, a named corpus (see `charrnn corpora`), "
             "or an http(s) URL (downloaded once into $CHARRNN_HOME/data). Omit it to train on a built-in demo "
             "corpus (Python standard library source).", show_default=False)] = None,
    # model
    cell: Annotated[str, typer.Option(help="Recurrent cell: tanh, gru or lstm.", rich_help_panel="Model")] = model_default("cell"),
    hidden_size: Annotated[int, typer.Option(help="Hidden units per layer. For tanh with --time-budget and neither size option given, the size is chosen for the budget on this machine.", rich_help_panel="Model")] = model_default("hidden_size"),
    num_layers: Annotated[int, typer.Option(help="Stacked recurrent layers.", rich_help_panel="Model")] = model_default("num_layers"),
    dropout: Annotated[str, typer.Option(help="Dropout between layers and before the head: a rate in [0, 1), or auto (0.005 per pass over the training split the run will make, at most 0.2; with --time-budget, decided from the speed of the first steps).", rich_help_panel="Model")] = "auto",
    recurrent_init: Annotated[str, typer.Option(help="tanh cell's W_hh at initialisation: KIND[:GAIN], KIND orthogonal, identity or uniform (torch's nn.RNN default).", rich_help_panel="Model")] = model_default("recurrent_init"),
    # data
    val_frac: Annotated[float, typer.Option(help="Fraction of the corpus held out for validation (after train).", rich_help_panel="Data")] = train_default("val_frac"),
    test_frac: Annotated[float, typer.Option(help="Fraction held out for testing (the end of the corpus).", rich_help_panel="Data")] = train_default("test_frac"),
    glob: Annotated[str, typer.Option(help="Files to read when CORPUS is a directory.", rich_help_panel="Data")] = train_default("glob"),
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Also read the files of symlinked directories inside a CORPUS directory (a file reached twice is read once either way).", rich_help_panel="Data")] = train_default("follow_links"),
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of the corpus (checked after a URL download, or of a local file); a mismatch is an error.", rich_help_panel="Data")] = None,
    batch_size: Annotated[int, typer.Option(help="B: parallel streams per batch.", rich_help_panel="Data")] = train_default("batch_size"),
    seq_len: Annotated[int, typer.Option(help="T: steps of back-propagation through time per batch.", rich_help_panel="Data")] = train_default("seq_len"),
    # optimisation
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW's; Muon's matrices take 2x).", rich_help_panel="Optimisation")] = train_default("lr"),
    min_lr_frac: Annotated[float, typer.Option(help="Cosine decay ends at lr times this.", rich_help_panel="Optimisation")] = train_default("min_lr_frac"),
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.", rich_help_panel="Optimisation")] = train_default("warmup_steps"),
    weight_decay: Annotated[float, typer.Option(help="Weight decay on weight matrices (AdamW and Muon, decoupled).", rich_help_panel="Optimisation")] = train_default("weight_decay"),
    optimizer: Annotated[str, typer.Option(help="auto (muon for tanh, adamw for gru and lstm), adamw, or muon: Muon (orthogonalised momentum, its learning rate 2x --lr) for the recurrent and input matrices and AdamW for the rest.", rich_help_panel="Optimisation")] = train_default("optimizer"),
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this; 0 disables.", rich_help_panel="Optimisation")] = train_default("grad_clip"),
    ema: Annotated[float, typer.Option(help="Validate, sample and save a moving average of the weights with this decay per step (about the last 1/(1 - EMA) steps); 0: the weights as trained.", rich_help_panel="Optimisation")] = train_default("ema"),
    # stopping
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.", rich_help_panel="When to stop")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the training split (default 10 if no limit is given).", rich_help_panel="When to stop")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Wall time for the whole command (start-up and the final validation and save included): seconds, or 90s, 5m, 1h. The schedule decays over it; on resume it counts the earlier training time.", rich_help_panel="When to stop")] = None,
    # running
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate on the validation split and save every N steps (default: every 200, or every 2 passes over the training split when that is sooner, so that a short corpus's best is seen).", rich_help_panel="Run", show_default=False)] = train_default("eval_every"),
    val_chars: Annotated[str, typer.Option(help="Characters of the validation split each evaluation scores, in evenly spaced windows (the same each time): a number, all (the whole split), or auto (a quarter of the characters trained between evaluations, 250,000 to 2,000,000).", rich_help_panel="Run")] = "auto",
    log_every: Annotated[int, typer.Option(help="Write a metrics.jsonl row (and, when stderr is not a terminal, a progress line) every N steps.", rich_help_panel="Run")] = train_default("log_every"),
    sample_every: Annotated[Optional[int], typer.Option(help="Show a short sample (200 characters, fixed seed) every N steps and append it to samples.txt in the run directory; 0 turns samples off (default: at evaluations, about every 200 steps).", rich_help_panel="Run", show_default=False)] = train_default("sample_every"),
    save_every: Annotated[Optional[str], typer.Option(help="Also save latest.pt every N steps (500) or every so often (90s, 10m, 1h); default: at each evaluation.", rich_help_panel="Run", show_default=False)] = train_default("save_every"),
    keep_last: Annotated[int, typer.Option(help="Also keep the N newest step-XXXXXXXX.pt checkpoints (0: only latest.pt and best.pt).", rich_help_panel="Run")] = train_default("keep_last"),
    on_nonfinite: Annotated[str, typer.Option(help="On a NaN/Inf loss or gradient: stop (exit 1, checkpoints untouched) or skip the step.", rich_help_panel="Optimisation")] = train_default("on_nonfinite"),
    schedule_steps: Annotated[Optional[int], typer.Option(help="Decay the learning rate over this many steps (default: the step limit); fix it to stop early and continue later with --resume unchanged.", rich_help_panel="Optimisation", show_default=False)] = train_default("schedule_steps"),
    seed: Annotated[int, typer.Option(help="Random seed (weights, dropout).", rich_help_panel="Run")] = train_default("seed"),
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel="Run")] = train_default("device"),
    kernel: Annotated[str, typer.Option(help="tanh cell implementation: auto (fused on CPU, torch's RNN on GPU), fused or nn.", rich_help_panel="Run")] = train_default("kernel"),
    precision: Annotated[str, typer.Option(help="auto (CPU: bf16 products on CPUs with bf16 instructions for width >= 256; else fp32, on CUDA with cuDNN's TF32), fp32, bf16 or fp16 (CUDA, with loss scaling).", rich_help_panel="Run")] = train_default("precision"),
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
    setup_logging(quiet)

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
            follow_links=follow_links, ema=ema, optimizer=optimizer,
        )
        # defaults < --config file < options, every number checked before anything is created or downloaded
        given = settle_configs(model_config, train_config, config, explicit(ctx))
        if save_config is not None:
            return write_config(save_config, model_config, train_config, given)
        # the corpus is resolved (downloaded, hashed for --sha256) after the run directory is locked
        return train_fn(corpus, model_config, train_config, run_dir=run_dir, resume=resume, explicit=given,
                        progress=not quiet, allow_lr_change=allow_lr_change, memory_check=not no_memory_check,
                        started=_command_started(), name=name, remeasure=remeasure, sha256=sha256)

    from ..training.signals import startup_signals

    with startup_signals():  # until the loop's own handlers: a signal stops start-up at once, with one line
        _train_done(guarded(go), save_config, quiet)


def _train_done(result, save_config: Optional[str], quiet: bool) -> None:
    if save_config is not None:
        logging.getLogger("charrnn").info(f"wrote {result}: train with `charrnn train CORPUS --config {result}`")
    elif not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone sums up
        report.print_summary(result)
