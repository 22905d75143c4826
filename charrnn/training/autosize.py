"""The model size for a time budget on this machine: `charrnn train --time-budget S` without --hidden-size or
--num-layers.

Two facts decide it. How low each size gets in N steps: measured once, in steps, by benchmarks/size_sweep.py
(machine-independent: the schedule and `--dropout auto` follow the step count), with AdamW and with Muon (the
optimizers learn differently: Muon gains most in few steps and with larger sizes). And how many steps this machine
makes of each size in the budget: a property of the machine, device, precision and shapes, timed once (a few steps
of each candidate, in interleaved rounds that must agree) and kept in $CHARRNN_HOME/speeds.json, so that later and
concurrent runs read it instead of timing again under whatever load they meet, and so choose alike. The size whose
predicted loss after its affordable steps is lowest wins; a size that would make fewer steps than the tables start
at is not chosen, as nothing measured says what it learns there.
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Optional

from ..config import resolve_optimizer
from .shift import ORDER
# the tables (size_tables.py), named here as the choice reads them, and tests replace them
from .size_tables import (BEST_STEPS, LARGER, MUON_BEST_STEPS, MUON_SHORT, MUON_SWEEP_CHARS, MUON_SWEEPS,
                          SHIFT_RAMP, SHIFTED_SWEEP_CHARS, SHIFTED_SWEEPS, SWEEP_CHARS_PER_STEP, SWEEPS)
# the timing and the speed file (speeds.py); time_steps, vocab_bucket, ROUNDS and ROUND_CALLS are named here too,
# as parts of the choice's measurement that its tests reach through this module
from .speeds import (AGREE, ROUND_CALLS, ROUNDS, TRIES, SpeedStore, measure, speed_keys, time_steps,  # noqa: F401
                     training_step, vocab_bucket)

CANDIDATES = tuple(sorted(next(iter(SWEEPS.values()))))  # tried at start-up, in (layers, hidden) order
PROBE_SHARE = 0.03  # one timing of the candidates may take at most this share of the budget (>= 1 step a size)
STARTUP_SHARE = 0.05  # the rest of start-up, validations and saves: the share of the budget not spent on steps


def applies(model_config, cfg, explicit) -> bool:
    """Whether a new run picks its size for its time budget: a tanh run with a budget whose caller named the
    options it set (`explicit`: the CLI does, config-file keys included) and set neither size option."""
    return (cfg.time_budget is not None and explicit is not None and model_config.cell == "tanh"
            and not {"hidden_size", "num_layers"} & set(explicit))


def _along(points: list, x: float, hold_last: bool) -> float:
    """Piecewise linear in log(x) through points [(x, y)] sorted by x: the first segment's slope continues below
    the first point where it falls (where it rises, as a loss does once a size has begun to overfit, the first value
    holds: fewer steps are not taken to learn more); past the last, the last value holds (hold_last) or the last
    segment's slope continues."""
    if len(points) == 1 or (x <= points[0][0] and points[1][1] >= points[0][1]):
        return points[0][1]
    if x >= points[-1][0] and hold_last:
        return points[-1][1]
    i = 1
    while i < len(points) - 1 and points[i][0] < x:
        i += 1
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (math.log(max(x, 1.0)) - math.log(x0)) / (math.log(x1) - math.log(x0))


def predicted_loss(size: tuple, steps: float, train_chars: Optional[float] = None, optimizer: str = "adamw",
                   shift: Optional[float] = None) -> float:
    """The sweeps' loss for `size` after `steps`: linear in log(steps) between measured points (no gain assumed
    past the last), and between the sweeps' corpora linear in log(training characters), the smallest held below;
    past the largest, plus the gain LARGER measured, held past its largest corpus (None: the largest in SWEEPS).
    `optimizer` "muon": plus Muon's gain over AdamW at those steps on a corpus of that length (muon_gain), and on a
    corpus whose validation text is unlike its training text (`shift`, shift.validation_shift; None: not measured)
    what SHIFTED_SWEEPS saw change, in the measure of shift_weight."""
    loss = _adamw_loss(size, steps, train_chars)
    if optimizer != "muon":
        return loss
    return loss + muon_gain(size, steps, train_chars) + shift_weight(shift, train_chars) * shifted_change(size, steps)


def shift_weight(shift: Optional[float], train_chars: Optional[float] = None) -> float:
    """How much of SHIFTED_SWEEPS' change counts for a corpus whose validation shift is `shift`, in [0, 1]: linear
    along SHIFT_RAMP (0 at its start, 1 at its end), held outside; and only near the
    length it was measured at: in full at SHIFTED_SWEEP_CHARS training characters, nothing at 10x fewer or 10x
    more (linear in log characters; on a long corpus nothing is run often enough to be memorised, on a short one
    SWEEPS' own small corpus says where sizes stop gaining). 0 where the shift was not measured."""
    if shift is None or not SHIFTED_SWEEPS:
        return 0.0
    low, high = SHIFT_RAMP
    share = min(1.0, max(0.0, (shift - low) / (high - low)))
    chars = max(SWEEPS) if train_chars is None else train_chars
    return share * _within_tenfold(chars, SHIFTED_SWEEP_CHARS)


def _within_tenfold(chars: float, at: float) -> float:
    """1 at `at` characters, 0 at 10x fewer or more and beyond, linear in log(characters) between."""
    chars = max(chars, 1.0)
    return max(0.0, 1.0 - math.log(max(chars, at) / min(chars, at)) / math.log(10.0))


def shifted_change(size: tuple, steps: float) -> float:
    """What SHIFTED_SWEEPS saw `size` gain from its first step count to `steps` less what MUON_SWEEPS saw (> 0
    where it gained less on the shifted corpus), each held past its last point; 0 where either lacks the size."""
    shifted, muon = SHIFTED_SWEEPS.get(size), MUON_SWEEPS.get(size)
    if not shifted or not muon:
        return 0.0
    first = max(shifted[0][0], muon[0][0])
    at = max(steps, first)
    return ((_along(shifted, at, True) - _along(shifted, first, True))
            - (_along(muon, at, True) - _along(muon, first, True)))


def _muon_pair(size: tuple) -> Optional[tuple]:
    """(Muon's points, AdamW's points) of `size` on the corpus both measured, or None where either lacks it."""
    muon, adamw = MUON_SWEEPS.get(size), SWEEPS.get(MUON_SWEEP_CHARS, {}).get(size)
    return (muon, adamw) if muon and adamw else None


def muon_gain(size: tuple, steps: float, train_chars: Optional[float] = None) -> float:
    """What Muon changes in the loss of `size` after `steps` on a training split of `train_chars` characters (<= 0
    where it helps; None: the largest in SWEEPS): MUON_SWEEPS minus SWEEPS on the corpus both measured, each linear
    in log(steps) and held past its last point (0 where either lacks the size). On a shorter corpus it moves toward
    what MUON_SHORT gains over AdamW's prediction on corpora that short (the short corpora are not tiny-shakespeare:
    what their difficulty adds is added to every size alike), linear in log(training characters): all of the way
    at MUON_SHORT's longest length and between its lengths, none at 10x fewer than its shortest, where a size's
    useful steps fall far below the table's first step count and its early overfitting says nothing about what
    those steps learn."""
    pair = _muon_pair(size)
    gain = 0.0 if pair is None else _along(pair[0], steps, hold_last=True) - _along(pair[1], steps, hold_last=True)
    lengths = sorted(chars for chars, table in MUON_SHORT.items() if size in table)
    if pair is None or not lengths or train_chars is None or train_chars >= MUON_SWEEP_CHARS:
        return gain
    shortest, longest = lengths[0], lengths[-1]
    if train_chars >= longest:
        share = math.log(MUON_SWEEP_CHARS / train_chars) / math.log(MUON_SWEEP_CHARS / longest)
    else:
        share = 1.0 if train_chars >= shortest else _within_tenfold(train_chars, shortest)
    # MUON_SHORT's loss less AdamW's at each length, between them linear in log(characters), the nearest outside
    there = [(chars, _along(MUON_SHORT[chars][size], steps, True) - _adamw_loss(size, steps, chars))
             for chars in lengths]
    at = _along(there, min(max(train_chars, shortest), longest), hold_last=True)
    return gain + share * (at - gain)


def _adamw_loss(size: tuple, steps: float, train_chars: Optional[float]) -> float:
    """predicted_loss with AdamW: SWEEPS between corpora, LARGER past them."""
    corpora = sorted(SWEEPS)
    chars = corpora[-1] if train_chars is None else max(train_chars, corpora[0])
    by_corpus = [(c, _along(SWEEPS[c][size], steps, hold_last=True)) for c in corpora]
    loss = _along(by_corpus, min(chars, corpora[-1]), hold_last=True)
    if chars <= corpora[-1] or not LARGER:
        return loss
    low, high = sorted(LARGER)
    share = min(1.0, max(0.0, math.log(chars / low)) / math.log(high / low))
    return loss + share * _larger_gain(size, steps)


def _weights(size: tuple) -> int:
    """The recurrent core's matrices of `size` (W_hh and, past the first layer, W_xh): what its capacity grows with."""
    layers, hidden = size
    return (2 * layers - 1) * hidden * hidden


def _larger_gain(size: tuple, steps: float) -> float:
    """What `size` gains after `steps` from LARGER's small corpus to its large one (a loss difference, <= 0 where
    more text helps). A size LARGER did not measure takes the gain of the measured sizes around it, linear in
    log(weights) (the nearest one's outside them)."""
    low, high = sorted(LARGER)
    if size not in LARGER[low]:
        measured = sorted(LARGER[low], key=_weights)
        points = [(_weights(s), _larger_gain(s, steps)) for s in measured]
        return _along(points, _weights(size), hold_last=True) if _weights(size) > points[0][0] else points[0][1]
    small, large = LARGER[low][size], LARGER[high][size]
    at = max(steps, small[0][0])
    return _along(large, at, True) - _along(small, at, True) - (large[0][1] - small[0][1])


def useful_steps(size: tuple, train_chars: Optional[float] = None,
                 chars_per_step: int = SWEEP_CHARS_PER_STEP, optimizer: str = "adamw") -> Optional[int]:
    """How many steps of `chars_per_step` characters still lower the validation loss of `size` on a training split
    of `train_chars` characters (None: the largest in SWEEPS): as many passes over the text as its best measured
    step count made (BEST_STEPS; with "muon", for a size MUON_BEST_STEPS lists, its counts in place of AdamW's on
    corpora no longer than its longest), linear in log(training characters) between the corpora where one was
    measured and held outside them. None where no sweep saw the size stop gaining: where none measured a stop, and
    with "muon" where the longest corpus at most this long that MUON_BEST_STEPS lists the size for lists it as None
    (Muon's sweep saw it still gaining there), up to the next one listing a count. Shorter than every corpus listing
    it, a size listed first as None keeps AdamW's counts (size_tables.MUON_BEST_STEPS says why)."""
    chars = max(SWEEPS) if train_chars is None else train_chars
    best = BEST_STEPS
    muon = {c: table[size] for c, table in MUON_BEST_STEPS.items() if size in table} if optimizer == "muon" else {}
    at_most = [c for c in muon if c <= chars]
    if at_most and muon[max(at_most)] is None:
        return None
    if not at_most and muon and muon[min(muon)] is None:
        muon = {}
    if any(steps is not None for steps in muon.values()):  # Muon's counts, AdamW's past them
        best = {**{c: t for c, t in BEST_STEPS.items() if c > max(MUON_BEST_STEPS)}, **MUON_BEST_STEPS}
    until = min((c for c, steps in muon.items() if steps is None and c > chars), default=math.inf)
    known = sorted((c, table[size] * SWEEP_CHARS_PER_STEP / c)
                   for c, table in best.items() if table.get(size) is not None and c < until)
    if not known:
        return None
    passes = _along(known, min(max(chars, known[0][0]), known[-1][0]), hold_last=True)
    return max(1, math.ceil(round(passes * chars / chars_per_step, 6)))  # the measured count, not one more


class Choice(NamedTuple):
    """What `choose` decided: the size, the step limit it sets (or None), why (the recorded words), and for each
    candidate the steps expected in the budget and the loss the tables predict there (never shown to users: the
    tables' corpus is not theirs)."""

    size: tuple
    limit: Optional[int]
    why: str
    steps: dict
    predicted: dict
    speeds: str = ""  # where the speeds came from (a log line), when choose_model_size chose


def fewest_measured(size: tuple, optimizer: str = "adamw") -> float:
    """The smallest step count (of the sweeps' batch) the tables hold for `size` (with "muon", Muon's table too):
    below it nothing measured says what the size learns."""
    fewest = min(table[size][0][0] for table in SWEEPS.values() if size in table)
    if optimizer == "muon" and _muon_pair(size) is not None:  # where Muon's table counts
        fewest = max(fewest, MUON_SWEEPS[size][0][0])
    return fewest


def most_measured(size: tuple) -> float:
    """The largest step count the tables hold for `size`: past it no gain is assumed."""
    return max(table[size][-1][0] for table in SWEEPS.values() if size in table)


def choose(budget: float, seconds_per_step: dict, train_chars: Optional[float] = None,
           step_cap: Optional[int] = None, spent: float = 0.0,
           chars_per_step: int = SWEEP_CHARS_PER_STEP, optimizer: str = "adamw",
           shift: Optional[float] = None) -> Choice:
    """The candidate with the lowest predicted loss after the steps the `budget` seconds left after `spent` allow
    (at most `step_cap`, and at most its useful_steps: more would overfit) on a training split of `train_chars`
    characters, among those that make at least the fewest steps the tables measured; without a `step_cap`, the step
    limit to stop at where the budget affords more steps than are useful (else None); and why, in words that hold
    for any corpus. A candidate that could not be timed (infinite seconds) is never chosen while another could;
    where no candidate makes the steps the tables start at, the fastest is taken. `shift`: how far the corpus's
    validation text is from its training text (shift.validation_shift; None: not measured), for Muon's prediction."""
    usable = max(0.0, budget - spent) * (1.0 - STARTUP_SHARE)
    timed = {size: s for size, s in seconds_per_step.items() if math.isfinite(s)} or seconds_per_step
    useful = {size: useful_steps(size, train_chars, chars_per_step, optimizer) or math.inf for size in timed}
    steps = {size: min(usable / s, step_cap or math.inf, useful[size]) for size, s in timed.items()}
    per = chars_per_step / SWEEP_CHARS_PER_STEP  # the sweeps' steps are of their batch: compared by characters
    predictions = {size: predicted_loss(size, steps[size] * per, train_chars, optimizer, shift) if steps[size] >= 1
                   else math.inf for size in timed}
    # the steps the budget affords (the steps past which it would overfit are a cap, not a want of speed)
    affords = {size: min(usable / s, step_cap or math.inf) for size, s in timed.items()}
    fewest = {size: fewest_measured(size, optimizer) for size in timed}
    enough = {size for size in timed if affords[size] * per >= fewest[size] and math.isfinite(timed[size])}
    name = lambda size: f"{size[0]}x{size[1]}"  # noqa: E731
    left = f" ({max(0.0, budget - spent):.0f} s of it left after start-up)" if spent >= 0.5 else ""
    where = f"in {budget:g} s on this machine{left}"
    sizes = f"{len(timed)} size" + ("s" if len(timed) != 1 else "")
    if enough:
        best = min(enough, key=lambda size: (predictions[size], timed[size], size))
        why = f"auto: of {sizes}, the one expected to learn most {where}"
    else:
        best = min(timed, key=lambda size: (timed[size], size))
        why = f"auto: of {sizes}, the fastest, as none makes the steps the tables start at {where}"
    expected = ", ".join(f"{name(size)} ~{steps[size]:,.0f}" for size in sorted(timed))
    why += f" (steps each would make: {expected})"
    weight = shift_weight(shift, train_chars) if optimizer == "muon" else 0.0
    if enough and weight > 0:
        why += (f"; this corpus's validation text is unlike its training text (a model of {ORDER}-character contexts "
                f"fit on the training text scores it {shift:.2f} nats/char worse than that text), so the choice leans "
                f"{weight:.0%} on sizes measured on a corpus like that")
    short = sorted(size for size in timed if size not in enough and size != best)
    if short:
        why += "; left out, as fewer steps than the tables measured: " + ", ".join(
            f"{name(size)} (~{affords[size]:,.0f} of at least {math.ceil(fewest[size] / per):,})"
            for size in short)
    limit = int(useful[best]) if step_cap is None and steps[best] == useful[best] < usable / timed[best] else None
    if useful[best] == math.inf and steps[best] * per > most_measured(best):
        why += (f"; where more steps stop helping {name(best)} on corpora of this size was not measured, so the "
                f"budget ends the run")
    return Choice(best, limit, why, steps, predictions)


def choose_model_size(model_config, cfg, device, dist, plan_for: Callable, train_chars: Optional[float] = None,
                      candidates: Optional[list] = None, step_cap: Optional[int] = None,
                      budget: Optional[float] = None, elapsed: Callable[[], float] = lambda: 0.0,
                      chars_per_step: int = SWEEP_CHARS_PER_STEP, remeasure: bool = False,
                      store: Optional[SpeedStore] = None, shift: Optional[float] = None) -> Choice:
    """The Choice for this run's time budget (choose), its size a candidate's (default: all) or, with none, the
    config's. Each candidate's speed with cfg's batch comes from the speed file (`store`, default
    $CHARRNN_HOME/speeds.json); those it does not hold (all of them with `remeasure`) are timed here (the global RNG
    is left as it was) and kept when the timings agreed (measure). The lock is held while timing, so runs started
    together wait for one measurement; the times are then averaged over the ranks so that every rank chooses alike.
    A candidate whose step fails (out of memory) counts as untimeable. `elapsed()`: seconds of the budget the command
    has spent so far (start-up, this timing), not left for steps. `chars_per_step`: the whole batch's, over all
    ranks. `shift`: the corpus's validation shift (choose)."""
    budget = cfg.time_budget if budget is None else budget
    candidates = list(CANDIDATES if candidates is None else candidates)
    if not candidates:
        size = (model_config.num_layers, model_config.hidden_size)
        return Choice(size, None, "as given: no candidate size fits in memory", {}, {})
    store = store or SpeedStore()
    configs, plans, keys = speed_keys(model_config, cfg, device, plan_for, candidates)
    with store.locked():  # released before the ranks meet below, so no rank waits on a lock another holds there
        known, problem = store.read()
        missing = [size for size in candidates if remeasure or keys[size] not in known]
        times = {size: known[keys[size]] for size in candidates if size not in missing}
        if problem:
            note = f"{problem}: timing the sizes again"
        elif remeasure:
            note = "--remeasure: timing the sizes again"
        elif not missing:
            note = f"measured earlier on this machine, read from {store.path}"
        else:
            note = ""
        if missing:
            measured, worst, steady = _time_candidates(missing, configs, plans, cfg, device, budget)
            times.update(measured)
            finite = {size: t for size, t in measured.items() if math.isfinite(t)}
            failed = None
            if steady and finite:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                failed = store.write({keys[size]: {"seconds_per_step": t, "spread": round(worst, 4),
                                                   "measured_at": stamp} for size, t in finite.items()})
            timed = ", ".join(f"{L}x{H}" for L, H in missing)
            if not steady:
                note = ((note + "; ") if note else "") + (
                    f"timed {timed} now, but this machine was too busy for steady timings (they differed by up to "
                    f"{worst:.0%}, more than {AGREE:.0%}): used for this run only and not kept; "
                    f"a run on a quieter machine measures again")
            elif failed:
                note = ((note + "; ") if note else "") + f"timed {timed} now, not kept: {failed}"
            else:
                note = ((note + "; ") if note else "") + (
                    f"timed {timed} now (repeat timings within {worst:.0%}), kept in {store.path} for later runs "
                    f"(--remeasure times them again)")
    ordered = [times[size] for size in candidates]
    ordered = [t / dist.world for t in dist.sum_values([*ordered, elapsed()])]
    spent = ordered.pop()
    choice = choose(budget, dict(zip(candidates, ordered)), train_chars, step_cap, spent, chars_per_step,
                    resolve_optimizer(cfg.optimizer, model_config.cell), shift)
    return choice._replace(speeds=note)


def _time_candidates(sizes: list, configs: dict, plans: dict, cfg, device, budget: float) -> tuple[dict, float, bool]:
    """measure() for a fresh model of each size with cfg's batch, at most PROBE_SHARE of the budget a try; the global
    RNG is left as it was, and a CUDA device's cache emptied after. The steps are timed with the memory thresholds
    the run's steps will have (allocator.py), not glibc's start-up ones, which add page faults to each step."""
    import torch

    from .allocator import keep_freed_memory

    keep_freed_memory()
    if device.type == "cuda":
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    elif device.type == "mps":
        sync = torch.mps.synchronize
    else:
        sync = lambda: None  # noqa: E731
    steps, failed = {}, {}
    with torch.random.fork_rng(devices=[]):
        for size in sizes:
            try:
                steps[size] = training_step(configs[size], cfg, device, plans[size])
            except RuntimeError:  # out of memory building it
                failed[size] = math.inf
        probe = PROBE_SHARE * budget
        measured, worst, steady = measure(steps, probe, sync, deadline=TRIES * probe) if steps else ({}, 0.0, True)
    steps.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the candidates' blocks, before the run measures free memory
    return {**measured, **failed}, worst, steady
