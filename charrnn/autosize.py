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

# training-split characters -> (layers, hidden) -> [(steps, best validation nats/char)]: tiny-shakespeare (its
# first 100,000 characters, and all of it), first 90 % / last 10 %, tanh, B32 T128, the defaults otherwise,
# --precision fp32, seed 1 (benchmarks/size_sweep.py; benchmarks/README.md)
SWEEPS: dict = {
    90_000: {
        (2, 128): [(125, 2.1471), (250, 1.8551), (500, 1.7050), (1000, 1.6496), (2000, 1.6340)],
        (2, 256): [(125, 1.9059), (250, 1.6857), (500, 1.5911), (1000, 1.6030), (2000, 1.6147)],
        (2, 512): [(125, 1.7298), (250, 1.5725), (500, 1.6049), (1000, 1.6359)],
    },
    1_003_854: {
        (2, 128): [(125, 2.2947), (250, 2.0381), (500, 1.8726), (1000, 1.7618), (2000, 1.6891), (4000, 1.6573)],
        (2, 256): [(125, 2.0995), (250, 1.8855), (500, 1.7269), (1000, 1.6202), (2000, 1.5583), (4000, 1.5346)],
        (2, 512): [(125, 1.9591), (250, 1.7662), (500, 1.6161), (1000, 1.5407), (2000, 1.5089), (4000, 1.4922)],
    },
}

# past the largest corpus in SWEEPS, each size gains what it gained on a corpus with more text to give: the Python
# source of the installed packages (benchmarks/code_corpus.py), its first 1.1 MB and 100 MB (training splits of
# 1,003,854 and 90,000,000 characters), the same settings. Its validation splits differ, and so does their difficulty:
# each size's difference at the first step count (where neither run has repeated its text) is taken out, and no gain
# is assumed below it.
LARGER: dict = {
    1_003_854: {
        (2, 128): [(250, 2.3622), (1000, 2.0007), (4000, 1.8836)],
        (2, 256): [(250, 2.1703), (1000, 1.8380), (4000, 1.7937)],
        (2, 512): [(250, 1.9882), (1000, 1.7782), (4000, 1.7916)],
    },
    90_000_000: {
        (2, 128): [(250, 2.2957), (1000, 1.9052), (4000, 1.6860)],
        (2, 256): [(250, 2.1292), (1000, 1.7522), (4000, 1.5694)],
        (2, 512): [(250, 1.9711), (1000, 1.6718), (4000, 1.5480)],
    },
}

# where more steps stopped lowering validation loss: training-split characters -> (layers, hidden) -> the step count
# with the lowest loss, where a longer run of that size did worse. 90,000: from SWEEPS; 1,003,854, 2x512: runs of
# 4,000, 6,000 and 8,000 steps with the default average, 1.4790, 1.4753, 1.4829 (benchmarks/README.md). A size not
# listed for a corpus was still gaining at the sweep's last point there.
BEST_STEPS: dict = {
    90_000: {(2, 256): 500, (2, 512): 250},
    1_003_854: {(2, 512): 6000},
}
SWEEP_CHARS_PER_STEP = 32 * 128  # the sweeps' batch x sequence length

CANDIDATES = tuple(sorted(next(iter(SWEEPS.values()))))  # tried at start-up, smallest first
PROBE_SHARE = 0.03  # the timing may take at most this share of the budget (and at least one step per size)
STARTUP_SHARE = 0.05  # the rest of start-up, validations and saves: the share of the budget not spent on steps


def applies(model_config, cfg, explicit) -> bool:
    """Whether a new run picks its size for its time budget: a tanh run with a budget whose caller named the
    options it set (`explicit`: the CLI does, config-file keys included) and set neither size option."""
    return (cfg.time_budget is not None and explicit is not None and model_config.cell == "tanh"
            and not {"hidden_size", "num_layers"} & set(explicit))


def _along(points: list, x: float, hold_last: bool) -> float:
    """Piecewise linear in log(x) through points [(x, y)] sorted by x: the first segment's slope continues below
    the first point; past the last, the last value holds (hold_last) or the last segment's slope continues."""
    if len(points) == 1:
        return points[0][1]
    if x >= points[-1][0] and hold_last:
        return points[-1][1]
    i = 1
    while i < len(points) - 1 and points[i][0] < x:
        i += 1
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (math.log(max(x, 1.0)) - math.log(x0)) / (math.log(x1) - math.log(x0))


def predicted_loss(size: tuple, steps: float, train_chars: Optional[float] = None) -> float:
    """The sweeps' loss for `size` after `steps`: linear in log(steps) between measured points (no gain assumed
    past the last), and between the sweeps' corpora linear in log(training characters), the smallest held below;
    past the largest, plus the gain LARGER measured, held past its largest corpus (None: the largest in SWEEPS)."""
    corpora = sorted(SWEEPS)
    chars = corpora[-1] if train_chars is None else max(train_chars, corpora[0])
    by_corpus = [(c, _along(SWEEPS[c][size], steps, hold_last=True)) for c in corpora]
    loss = _along(by_corpus, min(chars, corpora[-1]), hold_last=True)
    if chars <= corpora[-1] or not LARGER:
        return loss
    low, high = sorted(LARGER)
    small, large = LARGER[low][size], LARGER[high][size]
    at = max(steps, small[0][0])
    gain = _along(large, at, True) - _along(small, at, True) - (large[0][1] - small[0][1])
    share = min(1.0, max(0.0, math.log(chars / low)) / math.log(high / low))
    return loss + share * gain


def useful_steps(size: tuple, train_chars: Optional[float] = None,
                 chars_per_step: int = SWEEP_CHARS_PER_STEP) -> Optional[int]:
    """How many steps of `chars_per_step` characters still lower the validation loss of `size` on a training split
    of `train_chars` characters (None: the largest in SWEEPS): as many passes over the text as its best measured
    step count made (BEST_STEPS), linear in log(training characters) between the corpora where one was measured and
    held outside them. None where no sweep saw the size stop gaining."""
    known = sorted((chars, table[size] * SWEEP_CHARS_PER_STEP / chars)
                   for chars, table in BEST_STEPS.items() if size in table)
    if not known:
        return None
    chars = max(SWEEPS) if train_chars is None else train_chars
    passes = _along(known, min(max(chars, known[0][0]), known[-1][0]), hold_last=True)
    return max(1, math.ceil(round(passes * chars / chars_per_step, 6)))  # the measured count, not one more


def choose(budget: float, seconds_per_step: dict, train_chars: Optional[float] = None,
           step_cap: Optional[int] = None, spent: float = 0.0,
           chars_per_step: int = SWEEP_CHARS_PER_STEP) -> tuple[tuple, Optional[int], str]:
    """The candidate with the lowest predicted loss after the steps the `budget` seconds left after `spent` allow
    (at most `step_cap`, and at most its useful_steps: more would overfit) on a training split of `train_chars`
    characters; without a `step_cap`, the step limit to stop at where the budget affords more steps than are useful
    (else None); and why (a log line). A candidate that could not be timed (infinite seconds) is never chosen while
    another could; one the budget does not afford a whole step of learns nothing, so where no candidate gets a
    step the fastest is taken."""
    usable = max(0.0, budget - spent) * (1.0 - STARTUP_SHARE)
    timed = {size: s for size, s in seconds_per_step.items() if math.isfinite(s)} or seconds_per_step
    useful = {size: useful_steps(size, train_chars, chars_per_step) or math.inf for size in timed}
    steps = {size: min(usable / s, step_cap or math.inf, useful[size]) for size, s in timed.items()}
    per = chars_per_step / SWEEP_CHARS_PER_STEP  # the sweeps' steps are of their batch: compared by characters
    predictions = {size: predicted_loss(size, steps[size] * per, train_chars) if steps[size] >= 1 else math.inf
                   for size in timed}
    best = min(predictions, key=lambda size: (predictions[size], timed[size], size))
    shown = ", ".join(f"{L}x{H}: ~{steps[(L, H)]:,.0f} steps -> " + (
        f"{predictions[(L, H)]:.2f}" if math.isfinite(predictions[(L, H)]) else "no whole step")
        for L, H in sorted(predictions))
    left = f", {max(0.0, budget - spent):.0f} s of it left after start-up" if spent >= 0.5 else ""
    why = f"auto for a {budget:g} s budget on this machine{left} ({shown} nats/char predicted)"
    limit = int(useful[best]) if step_cap is None and steps[best] == useful[best] < usable / timed[best] else None
    return best, limit, why


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


def choose_model_size(model_config, cfg, device, dist, plan_for: Callable, train_chars: Optional[float] = None,
                      candidates: Optional[list] = None, step_cap: Optional[int] = None,
                      budget: Optional[float] = None, elapsed: Callable[[], float] = lambda: 0.0,
                      chars_per_step: int = SWEEP_CHARS_PER_STEP):
    """(num_layers, hidden_size, step limit or None, why) for this run's time budget (choose): every candidate
    (default: all) timed here with cfg's batch (the global RNG is left as it was), the times averaged over the ranks
    so that every rank chooses alike; a candidate whose step fails (out of memory) counts as untimeable. No
    candidate: the size stays. `elapsed()`: seconds of the budget the command has spent so far (start-up, this
    timing), not left for steps. `chars_per_step`: the whole batch's, over all ranks."""
    import dataclasses

    import torch

    budget = cfg.time_budget if budget is None else budget
    candidates = list(CANDIDATES if candidates is None else candidates)
    if not candidates:
        return model_config.num_layers, model_config.hidden_size, None, "as given: no candidate size fits in memory"
    per_size = PROBE_SHARE * budget / len(candidates)
    if device.type == "cuda":
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    elif device.type == "mps":
        sync = torch.mps.synchronize
    else:
        sync = lambda: None  # noqa: E731
    times = []
    with torch.random.fork_rng(devices=[]):
        for L, H in candidates:
            config = dataclasses.replace(model_config, num_layers=L, hidden_size=H, dropout=0.0)
            plan = plan_for(device, config.cell, H, cfg.precision, cfg.kernel)
            try:
                times.append(time_steps(training_step(config, cfg, device, plan), per_size, sync))
            except RuntimeError:  # out of memory: every rank still takes part in the sum below
                times.append(math.inf)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the candidates' blocks, before the run measures free memory
    times = [t / dist.world for t in dist.sum_values([*times, elapsed()])]
    spent = times.pop()
    (L, H), limit, why = choose(budget, dict(zip(candidates, times)), train_chars, step_cap, spent, chars_per_step)
    return L, H, limit, why
