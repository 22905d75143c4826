"""The model size for a time budget on this machine: `charrnn train --time-budget S` without --hidden-size or
--num-layers.

Two facts decide it. How low each size gets in N steps: measured once, in steps, by benchmarks/size_sweep.py
(machine-independent: the schedule and `--dropout auto` follow the step count). And how many steps this machine
makes of each size in the budget: timed at start-up, a few steps of each candidate with the run's own batch,
device and precision. The size whose predicted loss after its affordable steps is lowest wins.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

# (layers, hidden) -> [(steps, best validation nats/char)], tiny-shakespeare (first 90 % / last 10 %), tanh,
# B32 T128, the defaults otherwise, --precision fp32, seed 1 (benchmarks/size_sweep.py; benchmarks/README.md)
SWEEP: dict = {
    (2, 128): [(125, 2.2947), (250, 2.0381), (500, 1.8726), (1000, 1.7618), (2000, 1.6891), (4000, 1.6573)],
    (2, 256): [(125, 2.0995), (250, 1.8855), (500, 1.7269), (1000, 1.6202), (2000, 1.5583), (4000, 1.5346)],
    (2, 512): [(125, 1.9591), (250, 1.7662), (500, 1.6161), (1000, 1.5407), (2000, 1.5089), (4000, 1.4922)],
}

CANDIDATES = tuple(sorted(SWEEP))  # tried at start-up, smallest first
PROBE_SHARE = 0.03  # the timing may take at most this share of the budget (and at least one step per size)
STARTUP_SHARE = 0.05  # the rest of start-up, validations and saves: the share of the budget not spent on steps


def predicted_loss(size: tuple, steps: float) -> float:
    """The sweep's loss for `size` after `steps`, linear in log(steps) between measured points; before the first
    the first segment's slope continues, after the last the last value holds (no gain is assumed past it)."""
    points = SWEEP[size]
    if steps <= points[0][0]:
        (n0, v0), (n1, v1) = points[0], points[1]
    elif steps >= points[-1][0]:
        return points[-1][1]
    else:
        i = next(i for i in range(1, len(points)) if points[i][0] >= steps)
        (n0, v0), (n1, v1) = points[i - 1], points[i]
    steps = max(steps, 1.0)
    return v0 + (v1 - v0) * (math.log(steps) - math.log(n0)) / (math.log(n1) - math.log(n0))


def choose(budget: float, seconds_per_step: dict) -> tuple[tuple, str]:
    """The candidate with the lowest predicted loss after the steps `budget` seconds allow, and why (a log line)."""
    usable = budget * (1.0 - STARTUP_SHARE)
    predictions = {size: predicted_loss(size, usable / s) for size, s in seconds_per_step.items()}
    best = min(predictions, key=lambda size: (predictions[size], size))
    shown = ", ".join(f"{L}x{H}: ~{usable / seconds_per_step[(L, H)]:,.0f} steps -> {predictions[(L, H)]:.2f}"
                      for L, H in sorted(predictions))
    return best, f"auto for a {budget:g} s budget on this machine ({shown} nats/char predicted)"


def time_steps(step: Callable[[], None], budget: float, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per call of `step` after one warm-up call: as many calls as fit in `budget` seconds, at least one."""
    step()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= budget or calls >= 20:
            return elapsed / calls


def training_step(model_config, cfg, device, plan) -> Callable[[], None]:
    """One training step of a fresh model of this config (random weights and characters), as the trainer takes
    it: forward, loss, backward, clip, AdamW."""
    import torch

    from .model import CharRNN
    from .precision import torch_dtype
    from .trainer import clip_gradients, make_optimizer

    model = CharRNN(model_config, kernel=plan.kernel).to(device)
    model.use_precision(plan)
    model.train()
    opt = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
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


def choose_model_size(model_config, cfg, device, dist, plan_for: Callable, budget: Optional[float] = None):
    """(num_layers, hidden_size, why) for this run's time budget: every candidate timed here (the global RNG is
    left as it was), the times averaged over the ranks so that every rank chooses alike."""
    import dataclasses

    import torch

    budget = cfg.time_budget if budget is None else budget
    per_size = PROBE_SHARE * budget / len(CANDIDATES)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.random.fork_rng(devices=[]):
        for L, H in CANDIDATES:
            config = dataclasses.replace(model_config, num_layers=L, hidden_size=H, dropout=0.0)
            plan = plan_for(device, config.cell, H, cfg.precision, cfg.kernel)
            times.append(time_steps(training_step(config, cfg, device, plan), per_size, sync))
    times = [t / dist.world for t in dist.sum_values(times)]
    (L, H), why = choose(budget, dict(zip(CANDIDATES, times)))
    return L, H, why
