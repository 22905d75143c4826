"""Samples while training (`--sample-every`): a short sample of the model as it learns, shown above the progress
bar and appended to the run directory's samples.txt with its step and validation loss.

Every sample starts alike (a zero state fed a newline, or the vocabulary's first character, and seed 0), so that
successive samples differ only by what the model has learned. Sampling does not disturb training: it runs on a CPU
fp32 copy of the weights (the model being trained, its mode and device are untouched) with charrnn.sample's private
generator (torch's global RNG is neither drawn from nor reseeded), so a resumed run still equals an uninterrupted
one. Only rank 0 samples and writes. On resume, entries past the checkpoint's step are dropped first, as in
metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from ..store.runlog import RunLog, truncate

SAMPLES = "samples.txt"
SAMPLE_CHARS = 200
SAMPLE_SEED = 0
_HEADER = re.compile(r"^--- step (\d+)\b.* ---$")


def header(step: int, val: Optional[float], val_step: Optional[int]) -> str:
    where = "" if val_step in (None, step) else f" (at step {val_step})"
    return f"--- step {step}" + (f", val loss {val:.4f} nats/char{where}" if val is not None else "") + " ---"


class Sampler:
    """Short samples of a model being trained, from a CPU fp32 copy of its weights."""

    def __init__(self, model_config, vocab, length: int = SAMPLE_CHARS, seed: int = SAMPLE_SEED):
        self.config, self.vocab = dataclasses.replace(model_config), vocab
        self.length, self.seed = length, seed
        self.copy = None

    def __call__(self, model) -> str:
        import torch

        from ..model.network import CharRNN
        from ..inference.sampling import generate

        if self.copy is None:
            with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: draw nothing for them
                self.copy = CharRNN(self.config, kernel="auto")
        self.copy.load_state_dict(model.state_dict())  # copied to the CPU, in the copy's fp32
        chars = generate(self.copy, self.vocab, self.length, seed=self.seed)  # private generator; eval mode
        return "".join(c[0] for c in chars)


class SamplesWhileTraining:
    """Every --sample-every steps (default: at each evaluation; 0: never) and at the end, a short sample of the
    weights a user gets: to samples.txt (rank 0 alone samples and writes) and above the progress bar."""

    def __init__(self, run, display, keep_upto: int = 0):
        every = getattr(run.cfg, "sample_every", None)
        self.every = None if every == 0 else (every or run.cfg.eval_every)
        self.main, self.display = run.dist.is_main, display
        self.config, self.vocab = run.model_config, run.vocab
        self.log = SampleLog(run.run_dir, enabled=run.dist.is_main, hold_failures=run.dist.enabled).open(keep_upto)
        self.sampler: Optional[Sampler] = None  # built at the first sample

    def due(self, step: int, final: bool) -> bool:
        return self.every is not None and (step % self.every == 0 or final)

    def take(self, step: int, steps, val: Optional[float], val_step: Optional[int]) -> None:
        """Sample `steps.model` in its averaged weights (on rank 0; other ranks do nothing)."""
        if not self.main:
            return
        if self.sampler is None:
            self.sampler = Sampler(steps.model.config, self.vocab)
        with steps.averaged():
            text = self.sampler(steps.model)
        self.log.write(step, val, val_step, text)
        shown = text.replace("\r\n", "\n").replace("\r", "\\r")  # a lone CR would overprint the line
        self.display.message(f"{header(step, val, val_step)}\n{shown}")


class SampleLog(RunLog):
    """RUN_DIR/samples.txt (created at the first sample), one of the run's logs (store/runlog.py)."""

    def __init__(self, run_dir: str, enabled: bool = True, hold_failures: bool = False):
        super().__init__(run_dir, SAMPLES, "samples file", read_entries, enabled, hold_failures)

    def write(self, step: int, val: Optional[float], val_step: Optional[int], text: str) -> None:
        self.append(f"{header(step, val, val_step)}\n{text}\n\n")


def read_entries(text: str) -> list[tuple[int, str]]:
    """samples.txt as (step, entry text) pairs, in order."""
    entries: list[tuple[int, str]] = []
    for line in text.splitlines(keepends=True):
        match = _HEADER.match(line.rstrip("\n"))
        if match or not entries:
            entries.append((int(match.group(1)) if match else 0, line))
        else:
            entries[-1] = (entries[-1][0], entries[-1][1] + line)
    return entries


def truncate_samples(path: str, step: int) -> None:
    """Drop the entries past `step` (written after the checkpoint a run resumes from), atomically."""
    truncate(path, step, read_entries, "samples file")
