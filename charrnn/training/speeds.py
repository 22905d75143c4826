"""How fast this machine trains each candidate size: a few steps of each timed in interleaved rounds that must agree,
and kept in $CHARRNN_HOME/speeds.json under a key of everything that decides a step's speed (device, torch, the
precision route, cell, size, batch, threads, vocabulary bucket), so that later and concurrent runs read the speed
instead of timing again. autosize.py chooses the size from these speeds."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Callable, Optional

from ..config import resolve_optimizer

ROUNDS = 4  # each candidate is timed in this many interleaved rounds, and
ROUND_CALLS = 2  # calls of each size a round at least, the fastest of them its timing
AGREE = 0.10  # the fastest call of the first half of the rounds and of the second must agree within this share to
TRIES = 3  # be kept; else all rounds again, at most this many times in all; then used for this run only, not kept
SPEEDS_FORMAT = 1  # the speed file's format


def time_steps(step: Callable[[], None], budget: float, sync: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter, warm_up: bool = True, least: int = 1,
               fastest: bool = False) -> float:
    """Seconds per call of `step` (after one warm-up call, with `warm_up`): as many calls as fit in `budget`
    seconds, at least `least` and at most 20; their mean, or with `fastest` the fastest call (what the machine does
    when nothing else takes its cores for a moment)."""
    if warm_up:
        step()
        sync()
    calls, start, best = 0, clock(), math.inf
    while True:
        before = clock()
        step()
        calls += 1
        sync()
        now = clock()
        best = min(best, now - before)
        elapsed = now - start
        if (elapsed >= budget and calls >= least) or calls >= 20:
            return best if fastest else elapsed / calls


def spread(times: list) -> float:
    """How far repeated timings of one thing disagree: (slowest - fastest) / fastest."""
    low, high = min(times), max(times)
    return (high - low) / low if low > 0 else (0.0 if high == low else math.inf)


def measure(steps: dict, budget: float, sync: Callable[[], None] = lambda: None,
            clock: Callable[[], float] = time.perf_counter, rounds: int = ROUNDS, tries: int = TRIES,
            agree: float = AGREE, deadline: Optional[float] = None) -> tuple[dict, float, bool]:
    """Time every step function in `steps` ({size: step}): one warm-up call each, then `rounds` interleaved rounds
    of about `budget` seconds in all (at least ROUND_CALLS calls of each size a round, the fastest call its timing).
    A change of load while timing shows as a fastest call in the first half of the rounds that disagrees with the
    fastest in the second (one round's fastest call alone varies by up to ~20 % on a quiet 2-core VM; the fastest of
    half the rounds, by a few %). Where they disagree by more than `agree`, all rounds again, `tries` times at most,
    and none begun once `deadline` seconds have passed (a short budget's floor of calls can take several times
    its share). Returns (the median round timing of each size, infinite where its step failed: out of memory; the
    largest disagreement; whether it was within `agree`, so the speeds may be kept)."""
    times = {}
    for size, step in steps.items():
        try:
            step()
            sync()
        except RuntimeError:  # out of memory
            times[size] = math.inf
    live = [size for size in steps if size not in times]
    worst, rounds, started = 0.0, max(2, rounds), clock()
    for _ in range(max(1, tries)):
        samples: dict = {size: [] for size in live}
        for _ in range(rounds):
            for size in list(live):
                try:
                    samples[size].append(time_steps(steps[size], budget / rounds / len(live), sync, clock,
                                                    warm_up=False, least=ROUND_CALLS, fastest=True))
                except RuntimeError:
                    live.remove(size)
                    times[size] = math.inf
        half = rounds // 2
        worst = max((spread([min(v[:half]), min(v[half:])]) for size, v in samples.items() if size in live),
                    default=0.0)
        for size in live:
            ordered = sorted(samples[size])
            times[size] = ordered[len(ordered) // 2]
        if worst <= agree:
            return times, worst, True
        if deadline is not None and clock() - started >= deadline:
            break
    return times, worst, False


def machine_name(device) -> str:
    """What the device is: the CPU's model name, or the GPU's name."""
    import platform

    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def vocab_bucket(vocab_size: int) -> int:
    """The vocabulary a speed is timed and kept for: the next power of two (at least 32), so that corpora with
    about as many distinct characters share one measurement."""
    return max(32, 1 << max(0, int(vocab_size) - 1).bit_length())


def speed_key(machine: str, torch_version: str, plan, cell: str, size: tuple, batch: int, seq_len: int,
              threads: int, vocab: int) -> str:
    """The speed file's key: what decides how fast a training step runs here."""
    import dataclasses

    route = ",".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(plan).items()))
    return (f"device={machine}|torch={torch_version}|route={route}|cell={cell}|size={size[0]}x{size[1]}"
            f"|batch={batch}|seq_len={seq_len}|threads={threads}|vocab<={vocab}")


class SpeedStore:
    """The measured seconds per training step, kept in one small JSON file ({"format": 1, "speeds": {key: entry}})
    under CHARRNN_HOME. Readers never see half a file (it is replaced atomically); writers and measurers take an
    exclusive flock on the file's directory, so concurrent runs wait for the one timing and then read its speeds,
    and no writer's entries are lost. Any problem with the file costs a measurement, never the run."""

    def __init__(self, path: Optional[str] = None):
        from ..store.paths import speeds_file

        self.path = os.path.abspath(path or speeds_file())

    @contextlib.contextmanager
    def locked(self):
        """Hold the store's lock (none where the directory cannot be opened or locked: then unguarded)."""
        fd = None
        try:
            import fcntl

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if fd is not None:
                os.close(fd)
            fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing the last descriptor drops the flock

    def read(self) -> tuple[dict, Optional[str]]:
        """({key: seconds per step}, None), or ({}, what is wrong) where the file cannot be read or parsed; no
        file is no speeds and nothing wrong. Entries that are not a positive finite number are left out."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            return {}, f"cannot read the speed file {self.path}: {exc.strerror or exc}"
        except ValueError:
            return {}, f"the speed file {self.path} is not valid JSON"
        if (not isinstance(data, dict) or data.get("format") != SPEEDS_FORMAT
                or not isinstance(data.get("speeds"), dict)):
            return {}, f"the speed file {self.path} is not one this version of charrnn wrote"
        speeds = {}
        for key, entry in data["speeds"].items():
            value = entry.get("seconds_per_step") if isinstance(entry, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                speeds[key] = float(value)
        return speeds, None

    def write(self, entries: dict) -> Optional[str]:
        """Add or replace `entries` ({key: {"seconds_per_step": s, ...}}) keeping the others (call under `locked`);
        returns what went wrong, or None."""
        from ..errors import CharrnnError
        from ..store.fileio import write_text

        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            kept = data["speeds"] if data.get("format") == SPEEDS_FORMAT and isinstance(data["speeds"], dict) else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            kept = {}  # none yet, or unreadable: it is rewritten whole
        kept.update(entries)
        try:
            write_text(self.path, json.dumps({"format": SPEEDS_FORMAT, "speeds": kept}, indent=1, sort_keys=True)
                       + "\n", "speed file")
        except CharrnnError as exc:
            return str(exc)
        return None


def training_step(model_config, cfg, device, plan) -> Callable[[], None]:
    """One training step of a fresh model of this config (random weights and characters), as the trainer takes
    it: forward, loss, backward, clip, the optimizer's step (--optimizer, resolved for the cell)."""
    import torch

    from ..model.network import CharRNN
    from ..model.precision import torch_dtype
    from .trainer import clip_gradients, make_optimizer

    model = CharRNN(model_config, kernel=plan.kernel).to(device)
    model.use_precision(plan)
    model.train()
    opt = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                         resolve_optimizer(cfg.optimizer, model_config.cell), plan.core)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, model_config.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    autocast = torch_dtype(plan.autocast)

    def step():
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            _, loss, _ = model(x, None, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), cfg.grad_clip)
        opt.step()

    return step


def speed_keys(model_config, cfg, device, plan_for: Callable, candidates: list,
               threads: Optional[int] = None) -> tuple[dict, dict, dict]:
    """For each candidate size: the model config it is timed with (the vocabulary's bucket, no dropout), its
    precision plan and its speed file key (`threads`: torch's intra-op threads, default the current count)."""
    import dataclasses

    import torch

    from . import optimizer

    vocab = vocab_bucket(model_config.vocab_size)
    machine, threads = machine_name(device), threads or torch.get_num_threads()
    configs, plans, keys = {}, {}, {}
    for L, H in candidates:
        configs[(L, H)] = dataclasses.replace(model_config, num_layers=L, hidden_size=H, dropout=0.0,
                                              vocab_size=vocab)
        plans[(L, H)] = plan_for(device, model_config.cell, H, cfg.precision, cfg.kernel)
        keys[(L, H)] = speed_key(machine, str(torch.__version__), plans[(L, H)], model_config.cell, (L, H),
                                 cfg.batch_size, cfg.seq_len, threads, vocab)
        kind = resolve_optimizer(cfg.optimizer, model_config.cell)
        if kind != "adamw":  # its step costs more (AdamW's keys stay as they were), and more with more Newton-Schulz
            # iterations (their dtype, the plan's core, is in the key already)
            keys[(L, H)] += f"|optimizer={kind}|ns={optimizer.NS_STEPS}"
    return configs, plans, keys
