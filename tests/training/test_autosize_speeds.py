"""The size choice that load does not move (charrnn.training.autosize): each candidate's speed measured once, when repeat
timings agree, and kept in $CHARRNN_HOME/speeds.json for later and concurrent runs; the rule that no size is chosen
that makes fewer steps than the tables measured; and words that hold on any corpus (the start-up line, the stop
reason, the summary's note when a run made far fewer steps than expected)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from charrnn.training import autosize, report
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.precision import plan_for

from test_autosize import SWEEP, home, sweep  # noqa: E402,F401  (the same tables and per-test CHARRNN_HOME)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


class OneRank:
    world = 1

    @staticmethod
    def sum_values(values):
        return [float(v) for v in values]


class FakeTiming:
    """Stands in for the start-up timing: records which sizes it was asked to time and returns set speeds."""

    def __init__(self, speeds: dict, steady: bool = True, worst: float = 0.03):
        self.speeds, self.steady, self.worst, self.calls = speeds, steady, worst, []

    def __call__(self, sizes, configs, plans, cfg, device, budget):
        self.calls.append(list(sizes))
        return {size: self.speeds[size] for size in sizes}, self.worst, self.steady


def _choose(timing, monkeypatch, budget=600.0, batch=2, **kw):
    monkeypatch.setattr(autosize, "_time_candidates", timing)
    model_config = ModelConfig(vocab_size=20, hidden_size=32, num_layers=2)
    cfg = TrainConfig(batch_size=batch, seq_len=8, time_budget=budget, precision="fp32")
    return autosize.choose_model_size(model_config, cfg, torch.device("cpu"), OneRank, plan_for, **kw)


# ---------------------------------------------------------------------------------------------------------------
# the speed store


def test_stored_speeds_are_reused_so_a_later_run_times_nothing_and_chooses_alike(sweep, monkeypatch, home):
    fast = FakeTiming({(2, 128): 0.01, (2, 512): 0.04})
    first = _choose(fast, monkeypatch)
    assert fast.calls == [[(2, 128), (2, 512)]] and "kept in" in first.speeds, first.speeds
    stored = json.loads((home / "speeds.json").read_text())
    assert stored["format"] == 1 and len(stored["speeds"]) == 2
    entry = next(iter(stored["speeds"].values()))
    assert entry["seconds_per_step"] in (0.01, 0.04) and entry["spread"] == 0.03 and entry["measured_at"]
    for key in stored["speeds"]:  # keyed by what decides the speed
        for part in ("device=", "torch=", "route=", "cell=tanh", "batch=2", "seq_len=8", "threads=", "vocab<=32"):
            assert part in key, key
    # a later run, now on a machine that a fresh timing would find 10x slower for the big size: the kept speeds win
    loaded = FakeTiming({(2, 128): 0.01, (2, 512): 0.4})
    again = _choose(loaded, monkeypatch)
    assert loaded.calls == [] and again.size == first.size == (2, 512) and again.why == first.why
    assert "measured earlier on this machine" in again.speeds, again.speeds


def test_a_key_that_differs_is_timed_anew_and_kept_beside_the_others(sweep, monkeypatch, home):
    _choose(FakeTiming({(2, 128): 0.01, (2, 512): 0.04}), monkeypatch, batch=2)
    other = FakeTiming({(2, 128): 0.02, (2, 512): 0.08})
    _choose(other, monkeypatch, batch=4)  # another batch: another speed
    assert other.calls == [[(2, 128), (2, 512)]]
    assert len(json.loads((home / "speeds.json").read_text())["speeds"]) == 4
    # a candidate the file does not hold yet is the only one timed
    monkeypatch.setattr(autosize, "SWEEPS", {10_000: {**SWEEP, (2, 256): SWEEP[(2, 128)]}})
    new = FakeTiming({(2, 256): 0.02})
    _choose(new, monkeypatch, batch=2, candidates=[(2, 128), (2, 256), (2, 512)])
    assert new.calls == [[(2, 256)]]


def test_remeasure_times_every_size_again_and_replaces_the_kept_speed(sweep, monkeypatch, home):
    _choose(FakeTiming({(2, 128): 0.01, (2, 512): 0.04}), monkeypatch)
    again = FakeTiming({(2, 128): 0.01, (2, 512): 0.5})
    choice = _choose(again, monkeypatch, remeasure=True)
    assert again.calls == [[(2, 128), (2, 512)]] and choice.speeds.startswith("--remeasure"), choice.speeds
    values = sorted(e["seconds_per_step"] for e in json.loads((home / "speeds.json").read_text())["speeds"].values())
    assert values == [0.01, 0.5]
    assert "measured earlier" in _choose(FakeTiming({}), monkeypatch).speeds


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": 99, "speeds": {}}',
                                     b'{"format": 1, "speeds": []}'])
def test_a_corrupt_speed_file_is_timed_again_and_rewritten_without_a_traceback(sweep, monkeypatch, home, content):
    home.mkdir()
    (home / "speeds.json").write_bytes(content)
    timing = FakeTiming({(2, 128): 0.01, (2, 512): 0.04})
    choice = _choose(timing, monkeypatch)
    assert timing.calls == [[(2, 128), (2, 512)]] and "speed file" in choice.speeds and "timing the sizes again" in \
        choice.speeds, choice.speeds
    assert len(json.loads((home / "speeds.json").read_text())["speeds"]) == 2  # rewritten whole, valid


def test_entries_that_are_not_a_positive_number_are_not_speeds(home):
    home.mkdir()
    path = home / "speeds.json"
    path.write_text(json.dumps({"format": 1, "speeds": {
        "a": {"seconds_per_step": 0.5}, "b": {"seconds_per_step": -1}, "c": {"seconds_per_step": "fast"},
        "d": {"seconds_per_step": True}, "e": 3, "f": {"seconds_per_step": 0}}}))
    assert autosize.SpeedStore(str(path)).read() == ({"a": 0.5}, None)
    assert autosize.SpeedStore(str(home / "none.json")).read() == ({}, None)  # no file yet: nothing wrong


def test_unsteady_timings_are_used_for_the_run_but_not_kept(sweep, monkeypatch, home):
    busy = FakeTiming({(2, 128): 0.01, (2, 512): 0.04}, steady=False, worst=0.42)
    choice = _choose(busy, monkeypatch)
    assert choice.size == (2, 512) and "too busy" in choice.speeds and "42%" in choice.speeds, choice.speeds
    assert "not kept" in choice.speeds and not (home / "speeds.json").exists()
    _choose(busy, monkeypatch)
    assert len(busy.calls) == 2  # nothing kept: the next run times again


def test_a_speed_file_that_cannot_be_written_costs_the_keeping_not_the_run(sweep, monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("CHARRNN_HOME", str(blocked))  # a file where the directory should be
    choice = _choose(FakeTiming({(2, 128): 0.01, (2, 512): 0.04}), monkeypatch)
    assert choice.size == (2, 512) and "not kept: cannot write speed file" in choice.speeds, choice.speeds


WRITER = r"""
import sys
from charrnn.training.autosize import SpeedStore
store, name = SpeedStore(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[3])):
    with store.locked():
        known, problem = store.read()
        assert problem is None, problem
        store.write({f"{name}-{i}": {"seconds_per_step": 0.001 * (i + 1)}})
"""


def test_concurrent_writers_lose_no_entry_and_never_leave_a_broken_file(home):
    home.mkdir()
    path = str(home / "speeds.json")
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, f"w{n}", "15"], env=env, stderr=subprocess.PIPE)
             for n in range(4)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    speeds, problem = autosize.SpeedStore(path).read()
    assert problem is None and set(speeds) == {f"w{n}-{i}" for n in range(4) for i in range(15)}
    assert sorted(os.listdir(home)) == ["speeds.json"]  # no temp file or lock file left behind


# ---------------------------------------------------------------------------------------------------------------
# the timing itself


class Scripted:
    """A fake clock and step functions whose calls take scripted seconds."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def step(self, durations):
        durations = iter(durations)

        def run():
            self.now += next(durations)

        return run


def test_measure_keeps_steady_timings_and_tries_a_bounded_number_of_times_when_they_disagree():
    t = Scripted()
    steady = {(2, 128): t.step([1.0] * 100), (2, 512): t.step([4.0] * 100)}
    times, worst, ok = autosize.measure(steady, budget=0.0, clock=t.clock)
    assert ok and worst == 0.0 and times == {(2, 128): 1.0, (2, 512): 4.0}
    # the load changes while timing: the second half of the rounds is slower than the first; after `tries` sets of
    # rounds it gives up, saying so (each round: ROUND_CALLS calls, the fastest the round's timing; one warm-up call)
    t = Scripted()
    half = autosize.ROUNDS // 2
    per_try = autosize.ROUNDS * autosize.ROUND_CALLS
    one_try = [1.0] * autosize.ROUND_CALLS * half + [2.0] * autosize.ROUND_CALLS * (autosize.ROUNDS - half)
    loaded = [1.0] + one_try * 100
    times, worst, ok = autosize.measure({(2, 128): t.step(loaded)}, budget=0.0, clock=t.clock)
    assert not ok and worst == pytest.approx(1.0) and times[(2, 128)] in (1.0, 2.0)
    assert t.now == pytest.approx(1.0 + sum(loaded[1:1 + autosize.TRIES * per_try]))  # and no more calls
    # with a deadline, no try begins after it: one try here
    t = Scripted()
    times, worst, ok = autosize.measure({(2, 128): t.step(loaded)}, budget=0.0, clock=t.clock, deadline=1.0)
    assert not ok and t.now == pytest.approx(1.0 + sum(one_try))
    # a first try disturbed, a second steady: kept
    t = Scripted()
    calls = [1.0] + one_try + [2.0] * 100
    times, worst, ok = autosize.measure({(2, 128): t.step(calls)}, budget=0.0, clock=t.clock)
    assert ok and times == {(2, 128): 2.0}
    # one slow round in each half (a moment's noise, as a quiet VM has) leaves each half's fastest call alike: kept
    t = Scripted()
    noisy = [1.0] + ([1.0] * autosize.ROUND_CALLS + [1.3] * autosize.ROUND_CALLS) * 100
    times, worst, ok = autosize.measure({(2, 128): t.step(noisy)}, budget=0.0, clock=t.clock)
    assert ok and worst == 0.0 and t.now == pytest.approx(1.0 + sum(noisy[1:1 + per_try]))


def test_a_size_whose_step_fails_is_untimeable_and_the_others_are_timed():
    t = Scripted()

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    times, _, ok = autosize.measure({(2, 128): t.step([1.0] * 100), (2, 512): out_of_memory}, 0.0, clock=t.clock)
    assert ok and times == {(2, 128): 1.0, (2, 512): math.inf}


def test_vocabulary_buckets_are_powers_of_two():
    assert [autosize.vocab_bucket(v) for v in (1, 32, 33, 65, 128, 129, 5000)] == [32, 32, 64, 128, 128, 256, 8192]


# ---------------------------------------------------------------------------------------------------------------
# the choice and its words


def test_never_a_size_predicted_to_make_fewer_steps_than_the_tables_measured(monkeypatch):
    # the big size learns far more a step: its 50 steps are predicted (by the first slope, continued) to beat the
    # small one's 1,900, but the tables start at 100 steps, so nothing measured says so
    steep = {(2, 128): [(100, 2.5), (1000, 2.3)], (2, 512): [(100, 1.5), (1000, 1.4)]}
    monkeypatch.setattr(autosize, "SWEEPS", {10_000: steep})
    monkeypatch.setattr(autosize, "LARGER", {})
    monkeypatch.setattr(autosize, "BEST_STEPS", {})
    speeds = {(2, 128): 0.03, (2, 512): 1.14}
    choice = autosize.choose(60, speeds, 10_000)
    assert choice.predicted[(2, 512)] < choice.predicted[(2, 128)] and round(choice.steps[(2, 512)]) == 50
    assert choice.size == (2, 128), choice.why
    assert "left out, as fewer steps than the tables measured: 2x512 (~50 of at least 100)" in choice.why, choice.why
    # with the steps counted by characters: a quarter of the sweeps' batch needs four times the steps
    assert autosize.choose(240, speeds, 10_000, chars_per_step=autosize.SWEEP_CHARS_PER_STEP // 4).size == (2, 128)
    # once the budget affords them, the big size is chosen
    assert autosize.choose(240, speeds, 10_000).size == (2, 512)
    # a cap where more steps would overfit is no want of speed: the size stays eligible
    monkeypatch.setattr(autosize, "BEST_STEPS", {10_000: {(2, 512): 60}})
    assert autosize.choose(240, speeds, 10_000)[:2] == ((2, 512), 60)


def test_the_start_up_words_hold_for_any_corpus(sweep):
    choice = autosize.choose(300, {(2, 128): 0.01, (2, 512): 0.04}, 10_000, spent=12)
    assert choice.why.startswith("auto: of 2 sizes, the one expected to learn most in 300 s on this machine "
                                 "(288 s of it left after start-up)"), choice.why
    assert not re.search(r"\d\.\d\d", choice.why) and "nats" not in choice.why  # no table's losses as predictions
    # a size never seen to stop gaining on corpora this size, run past the tables' last point: "not measured"
    assert "not measured" not in choice.why  # 6,840 steps: within the tables' 10,000
    longer = autosize.choose(3000, {(2, 128): 0.01, (2, 512): 0.04}, 10_000).why
    assert "where more steps stop helping 2x512 on corpora of this size was not measured" in longer, longer


def test_the_summary_says_where_the_step_limit_came_from_and_when_far_fewer_steps_were_made():
    base = dict(epoch=1, elapsed=50.0, best_val_loss=None, last_train_loss=None, val_history=[], run_dir="r",
                latest="r/latest.pt", best=None)
    limited = SimpleNamespace(**base, step=250, stopped_by="max_steps", step_limit=250, expected_steps=250.0)
    rows = dict(report.summary_rows(limited, val_losses=[]))
    assert rows["steps"] == "250 (epoch 1, stopped after 250 steps, where more steps stopped helping on corpora of " \
                            "this size)" and "note" not in rows
    asked = SimpleNamespace(**base, step=250, stopped_by="max_steps", step_limit=None, expected_steps=None)
    assert dict(report.summary_rows(asked, val_losses=[]))["steps"] == "250 (epoch 1, stopped by max steps)"
    slow = SimpleNamespace(**base, step=129, stopped_by="time_budget", step_limit=None, expected_steps=470.4)
    note = dict(report.summary_rows(slow, val_losses=[]))["note"]
    assert note.startswith("made 129 of the ~470 steps its size was chosen for:"), note
    assert "\n" not in note and note.endswith("slower than the speeds it was chosen with")
    shared = SimpleNamespace(**vars(slow), shared_with=2)  # other runs trained on this CPU meanwhile: that is why
    assert report.fewer_steps_than_expected(shared).endswith(": it shared the CPU with up to 2 other charrnn runs")
    # at half or more of what was expected, nothing to say; nor for a run that chose no size
    assert report.fewer_steps_than_expected(SimpleNamespace(**{**vars(slow), "step": 236})) is None
    assert report.fewer_steps_than_expected(asked) is None


def test_a_run_stopped_at_the_choices_step_limit_says_where_that_limit_came_from(tmp_path, monkeypatch):
    """Through the library, with tables small enough for a tiny run: both sizes stop gaining after one pass (43
    steps of 4x16 here), so the run stops there, and its summary says why rather than "max steps"."""
    import charrnn
    from conftest import make_corpus

    corpus = make_corpus(tmp_path / "c.txt", 3000)
    tiny = {(1, 8): [(1, 3.0), (10, 2.9), (100, 2.8)], (1, 16): [(1, 3.0), (10, 2.8), (100, 2.7)]}
    monkeypatch.setattr(autosize, "SWEEPS", {1_000: tiny})
    monkeypatch.setattr(autosize, "LARGER", {})
    monkeypatch.setattr(autosize, "CANDIDATES", tuple(sorted(tiny)))
    per = autosize.SWEEP_CHARS_PER_STEP
    monkeypatch.setattr(autosize, "BEST_STEPS", {1_000: {(1, 8): 1_000 / per, (1, 16): 1_000 / per}})
    cfg = TrainConfig(batch_size=4, seq_len=16, warmup_steps=2, eval_every=1000, time_budget=600, seed=1, ema=0.0,
                      val_frac=0.1, test_frac=0.0)
    result = charrnn.train(str(corpus), None, cfg, run_dir=str(tmp_path / "run"), progress=False,
                           explicit={"time_budget"})
    assert (result.step, result.stopped_by, result.step_limit, result.expected_steps) == (43, "max_steps", 43, 43)
    rows = dict(report.summary_rows(result))
    assert rows["steps"] == "43 (epoch 1, stopped after 43 steps, where more steps stopped helping on corpora of " \
                            "this size)", rows["steps"]
    assert "note" not in rows


def test_on_a_made_up_corpus_the_cli_says_what_it_chose_and_why_in_words_for_any_corpus(tmp_path):
    """The real command on a corpus nothing was fit on (made-up log lines), in a scratch CHARRNN_HOME whose speed
    file holds set speeds, far faster than any machine (so the choice does not depend on this one's): the start-up
    line says which size of how many and why, with none of the tables' losses, no size is timed, the size never
    measured to stop gaining on corpora this small is said to be "not measured", and the summary says the run made
    far fewer steps than its choice expected, with both numbers."""
    from conftest import cli_env, run_cli

    import random

    rng = random.Random(3)
    lines = [f"{rng.choice(['INFO', 'WARN', 'ERR'])} job-{rng.randint(1, 99):02d} "
             f"{rng.choice(['started', 'stopped', 'retried', 'queued'])} after {rng.randint(1, 999)}ms\n"
             for _ in range(160)]
    corpus = tmp_path / "jobs.log"
    corpus.write_text("".join(lines)[:5000])
    home = tmp_path / "home"
    home.mkdir()
    vocab = len(set(corpus.read_text()))
    cfg = TrainConfig(batch_size=4, seq_len=16)
    _, _, keys = autosize.speed_keys(ModelConfig(vocab_size=vocab), cfg, torch.device("cpu"), plan_for,
                                     list(autosize.CANDIDATES), threads=1)
    (home / "speeds.json").write_text(json.dumps({"format": 1, "speeds": {
        keys[size]: {"seconds_per_step": 1e-5 * size[0] * size[1] / 256} for size in autosize.CANDIDATES}}))
    proc = run_cli("train", corpus, "--time-budget", "40s", "--batch-size", "4", "--seq-len", "16",
                   "--eval-every", "100000", "--sample-every", "0", "--run-dir", tmp_path / "run", cwd=tmp_path,
                   env=cli_env(CHARRNN_HOME=home, OMP_NUM_THREADS=1), timeout=300, check=0)
    err = proc.stderr.decode()
    assert "measured earlier on this machine" in err and "timed " not in err, err
    line = next(line for line in err.splitlines() if "model size" in line)
    # on 4,500 characters the sizes seen to stop gaining stop before the steps the tables start at: never chosen
    chosen = re.match(r"charrnn: model size (\d+)x(\d+): ", line)
    size = (int(chosen.group(1)), int(chosen.group(2))) if chosen else None
    assert size in autosize.CANDIDATES and autosize.useful_steps(size, 4_500, 64, "muon") is None, line
    name = f"{size[0]}x{size[1]}"
    assert line.startswith(f"charrnn: model size {name}: auto: of {len(autosize.CANDIDATES)} sizes, the one "
                           "expected to learn most in 40 s on this machine"), line
    assert not re.search(r"\d\.\d\d", line) and "nats" not in line and "predicted" not in line, line
    assert f"where more steps stop helping {name} on corpora of this size was not measured, so the budget ends " \
           "the run" in line, line
    expected = re.search(rf"{name} ~(\d{{1,3}}(?:,\d{{3}})*)", line).group(1)
    made = re.search(r"stopped by time budget", err) and re.search(r"(?m)^charrnn: done: (\d+) steps", err)
    assert made, err
    assert f"made {int(made.group(1)):,} of the ~{expected} steps its size was chosen for:" in err, err


def test_runs_started_together_wait_for_one_timing_and_choose_alike(sweep, monkeypatch):
    """Three choosers at once (threads, each with its own descriptor, so the lock separates them as it does
    processes): one times the sizes, the others wait for it and read what it kept."""
    import threading

    timing = FakeTiming({(2, 128): 0.01, (2, 512): 0.04})
    monkeypatch.setattr(autosize, "_time_candidates", timing)
    start, choices = threading.Barrier(3), []

    def chooser():
        model_config = ModelConfig(vocab_size=20, hidden_size=32, num_layers=2)
        cfg = TrainConfig(batch_size=2, seq_len=8, time_budget=600.0, precision="fp32")
        start.wait()
        choices.append(autosize.choose_model_size(model_config, cfg, torch.device("cpu"), OneRank, plan_for))

    threads = [threading.Thread(target=chooser) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(choices) == 3 and len(timing.calls) == 1, timing.calls
    assert {c.size for c in choices} == {(2, 512)} and len({c.why for c in choices}) == 1
    assert sum("measured earlier" in c.speeds for c in choices) == 2


def test_the_choice_predicts_with_the_optimizer_the_run_will_use(sweep, monkeypatch):
    monkeypatch.setattr(autosize, "MUON_SWEEP_CHARS", 10_000)
    monkeypatch.setattr(autosize, "MUON_SWEEPS", {(2, 512): [(100, 1.7), (1000, 1.5), (10000, 1.45)]})
    monkeypatch.setattr(autosize, "_time_candidates", FakeTiming({(2, 128): 0.01, (2, 512): 0.1}))
    chosen = {}
    for optimizer in ("auto", "muon", "adamw"):
        cfg = TrainConfig(batch_size=2, seq_len=8, time_budget=15.0, precision="fp32", optimizer=optimizer)
        chosen[optimizer] = autosize.choose_model_size(ModelConfig(vocab_size=20), cfg, torch.device("cpu"), OneRank,
                                                       plan_for).size
    assert chosen == {"auto": (2, 512), "muon": (2, 512), "adamw": (2, 128)}  # auto: Muon for tanh
    gru = TrainConfig(batch_size=2, seq_len=8, time_budget=15.0, precision="fp32")
    assert autosize.choose_model_size(ModelConfig(vocab_size=20, cell="gru"), gru, torch.device("cpu"), OneRank,
                                      plan_for).size == (2, 128)  # auto: AdamW for the gated cells


@pytest.mark.parametrize("unlike", [True, False])
def test_a_run_measures_its_corpus_validation_shift_and_the_choice_says_so(tmp_path, monkeypatch, unlike):
    """Through the library, with tables small enough for a tiny run: on English-like tables 1x16 learns more than
    1x8; on the shifted table it gains nothing. A made-up corpus whose validation tenth is other words (shift well
    above the shifted table's) gets 1x8 and the words that say why; one whose validation is more of the same gets
    1x16 and no such words."""
    import random

    import charrnn
    from charrnn.store.checkpoint import load_checkpoint
    from test_autosize import _words

    rng = random.Random(5)
    first = [rng.choice("bcdfg") + rng.choice("aeiou") + rng.choice("lmnrst") for _ in range(40)]
    other = [rng.choice("hjkpq") + rng.choice("aeiouy") + rng.choice("vwxz") for _ in range(40)]
    corpus = tmp_path / "c.txt"
    corpus.write_text(_words(rng, first, 90_000) + _words(rng, other if unlike else first, 10_000))
    tiny = {(1, 8): [(1, 3.0), (2, 2.9), (100, 2.8)], (1, 16): [(1, 3.0), (2, 2.8), (100, 2.7)]}  # sweep steps
    monkeypatch.setattr(autosize, "SWEEPS", {90_000: tiny})
    monkeypatch.setattr(autosize, "LARGER", {})
    monkeypatch.setattr(autosize, "BEST_STEPS", {})
    monkeypatch.setattr(autosize, "CANDIDATES", tuple(sorted(tiny)))
    monkeypatch.setattr(autosize, "MUON_SWEEP_CHARS", 90_000)
    monkeypatch.setattr(autosize, "MUON_SWEEPS", tiny)
    monkeypatch.setattr(autosize, "SHIFTED_SWEEPS", {(1, 8): tiny[(1, 8)], (1, 16): [(1, 3.0), (2, 3.0), (100, 3.0)]})
    monkeypatch.setattr(autosize, "SHIFTED_SWEEP_CHARS", 90_000)
    monkeypatch.setattr(autosize, "SHIFT_RAMP", (0.2, 0.6))
    cfg = TrainConfig(batch_size=4, seq_len=16, warmup_steps=2, eval_every=1000, time_budget=600, max_steps=80,
                      seed=1, ema=0.0, val_frac=0.1, test_frac=0.0)
    charrnn.train(str(corpus), None, cfg, run_dir=str(tmp_path / "run"), progress=False,
                  explicit={"time_budget", "max_steps"})
    ckpt = load_checkpoint(str(tmp_path / "run" / "latest.pt"))
    size = (ckpt["model_config"]["num_layers"], ckpt["model_config"]["hidden_size"])
    said = "this corpus's validation text is unlike its training text" in ckpt["model_size"]
    assert (size, said) == (((1, 8), True) if unlike else ((1, 16), False)), ckpt["model_size"]
    if unlike:
        assert "so the choice leans 100% on sizes measured on a corpus like that" in ckpt["model_size"]
