"""The model size chosen for a time budget (charrnn.autosize): the prediction from the sweep, the choice from the
machine's measured speed, and the start-up timing."""

from __future__ import annotations

import math

import pytest
import torch

from charrnn import autosize
from charrnn.config import ModelConfig, TrainConfig

SWEEP = {(2, 128): [(100, 2.3), (1000, 1.8), (10000, 1.6)], (2, 512): [(100, 2.0), (1000, 1.6), (10000, 1.45)]}


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.setattr(autosize, "SWEEPS", {10_000: SWEEP})
    monkeypatch.setattr(autosize, "LARGER", {})
    monkeypatch.setattr(autosize, "CANDIDATES", tuple(sorted(SWEEP)))


def test_the_shipped_sweeps_cover_every_candidate_sorted_and_improving_with_steps():
    assert len(autosize.SWEEPS) >= 2 and len(autosize.CANDIDATES) >= 3
    for chars, table in autosize.SWEEPS.items():
        assert tuple(sorted(table)) == autosize.CANDIDATES, chars
        for size, points in table.items():
            steps = [n for n, _ in points]
            assert steps == sorted(steps) and len(steps) >= 3, (chars, size)
            assert points[-1][1] < points[0][1], (chars, size)  # more steps, lower loss
    assert len(autosize.LARGER) == 2 and min(autosize.LARGER) == max(autosize.SWEEPS)
    for chars, table in autosize.LARGER.items():
        assert tuple(sorted(table)) == autosize.CANDIDATES, chars
        assert len({tuple(n for n, _ in points) for points in table.values()}) == 1  # the same step counts


def test_between_corpora_the_prediction_is_linear_in_log_characters(monkeypatch):
    small = {size: [(n, v + 0.5) for n, v in points] for size, points in SWEEP.items()}
    monkeypatch.setattr(autosize, "SWEEPS", {1_000: small, 100_000: SWEEP})
    monkeypatch.setattr(autosize, "LARGER", {})
    at = autosize.predicted_loss
    assert at((2, 128), 1000, 1_000) == pytest.approx(2.3) and at((2, 128), 1000, 100_000) == pytest.approx(1.8)
    assert at((2, 128), 1000, 10_000) == pytest.approx(2.05)  # halfway in log
    assert at((2, 128), 1000, 10) == pytest.approx(2.3) and at((2, 128), 1000, 10**9) == pytest.approx(1.8)
    assert at((2, 128), 1000) == pytest.approx(1.8)  # no corpus size given: the largest swept


def test_past_the_largest_corpus_each_size_gains_what_it_gained_on_the_larger_one(monkeypatch):
    monkeypatch.setattr(autosize, "SWEEPS", {1_000: {s: [(n, v + 0.5) for n, v in p] for s, p in SWEEP.items()},
                                             100_000: SWEEP})
    # the larger corpus's validation split is 0.1 easier for both (the first step count); past it, 2x512 gains
    # 0.2 more at 10,000 steps and 2x128 nothing
    small = {(2, 128): [(100, 2.5), (10000, 2.0)], (2, 512): [(100, 2.3), (10000, 1.8)]}
    large = {(2, 128): [(100, 2.4), (10000, 1.9)], (2, 512): [(100, 2.2), (10000, 1.5)]}
    monkeypatch.setattr(autosize, "LARGER", {100_000: small, 10_000_000: large})
    at = autosize.predicted_loss
    assert at((2, 512), 10000, 100_000) == pytest.approx(1.45)  # up to the largest swept: the sweeps alone
    assert at((2, 512), 10000, 10**6) == pytest.approx(1.35)  # halfway in log: half the gain
    assert at((2, 512), 10000, 10**7) == pytest.approx(1.25) and at((2, 512), 10000, 10**9) == pytest.approx(1.25)
    assert at((2, 128), 10000, 10**9) == pytest.approx(1.6)  # no gain beyond the easier validation text
    assert at((2, 512), 100, 10**9) == pytest.approx(2.0)  # at the first step count nothing is gained
    # each size's own difference at the first step count is the easier text; below it no gain is assumed
    large[(2, 128)] = [(100, 2.3), (10000, 1.7)]  # 0.2 easier at 100 steps, and 0.1 more gained by 10,000
    assert at((2, 128), 10000, 10**9) == pytest.approx(1.5)
    assert at((2, 128), 10, 10**9) == pytest.approx(at((2, 128), 10, 100_000))


def test_prediction_interpolates_in_log_steps_and_holds_past_the_last_point(sweep):
    assert autosize.predicted_loss((2, 128), 1000) == pytest.approx(1.8)
    assert autosize.predicted_loss((2, 128), math.sqrt(100 * 1000)) == pytest.approx(2.05)  # halfway in log
    assert autosize.predicted_loss((2, 128), 10) == pytest.approx(2.8)  # the first slope continues
    assert autosize.predicted_loss((2, 128), 10**6) == pytest.approx(1.6)  # no gain assumed past the sweep


def test_a_slow_machine_or_short_budget_gets_the_small_model_a_fast_one_the_big(sweep):
    # the big model is 8x slower per step: in 60 s this machine makes 1,140 small steps or 142 big ones
    slow = {(2, 128): 0.05, (2, 512): 0.4}
    (size, why) = autosize.choose(60, slow)
    assert size == (2, 128) and "60 s budget" in why and "2x512" in why and "steps" in why
    assert autosize.choose(3000, slow)[0] == (2, 512)  # a long budget affords the big model enough steps
    fast = {(2, 128): 0.01, (2, 512): 0.04}
    assert autosize.choose(60, fast)[0] == (2, 512)


def test_time_steps_warms_up_then_times_at_least_one_step():
    calls = []
    per = autosize.time_steps(lambda: calls.append(1), budget=0.0)
    assert len(calls) == 2 and per >= 0  # one warm-up call, one timed
    calls.clear()
    autosize.time_steps(lambda: calls.append(1), budget=60.0)
    assert len(calls) == 21  # at most 20 timed calls, however long the budget


class OneRank:
    world = 1

    @staticmethod
    def sum_values(values):
        return [float(v) for v in values]


def test_choosing_times_every_candidate_and_leaves_the_global_rng_alone(sweep):
    from charrnn.precision import plan_for

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model_config = ModelConfig(vocab_size=20, hidden_size=512, num_layers=2)
    cfg = TrainConfig(batch_size=2, seq_len=8, time_budget=1.0, precision="fp32")
    L, H, why = autosize.choose_model_size(model_config, cfg, torch.device("cpu"), OneRank, plan_for)
    assert (L, H) in SWEEP and why.startswith("auto for a 1 s budget")
    assert torch.equal(torch.rand(3), expected)
    assert (model_config.num_layers, model_config.hidden_size) == (2, 512)  # the caller's config untouched


def test_a_budget_run_without_size_options_chooses_records_and_keeps_its_size(tmp_path):
    """The CLI path: the choice is logged, stored in the checkpoint, shown by `charrnn info` and kept on resume;
    a size option given on purpose wins (no timing, "as given")."""
    from conftest import make_corpus, run_cli

    from charrnn.checkpoint import load_checkpoint

    corpus = make_corpus(tmp_path / "c.txt", 4000)
    small = ["--batch-size", "4", "--seq-len", "16", "--warmup-steps", "2", "--eval-every", "1000"]
    run = tmp_path / "run"
    proc = run_cli("train", corpus, "--time-budget", "3", "--run-dir", run, *small, check=0)
    err = proc.stderr.decode()
    assert "model size 2x" in err and "auto for a 3 s budget on this machine" in err, err
    ckpt = load_checkpoint(str(run / "latest.pt"))
    size = (ckpt["model_config"]["num_layers"], ckpt["model_config"]["hidden_size"])
    assert size in autosize.CANDIDATES and ckpt["model_size"].startswith("auto for a 3 s budget")
    info = run_cli("info", run, check=0).stdout.decode()
    assert "model size:" in info and "auto for a 3 s budget" in info, info

    run_cli("train", "--resume", run, "--time-budget", "4", *small, check=0)
    again = load_checkpoint(str(run / "latest.pt"))
    assert (again["model_config"]["num_layers"], again["model_config"]["hidden_size"]) == size
    assert again["model_size"] == ckpt["model_size"]

    given = tmp_path / "given"
    proc = run_cli("train", corpus, "--time-budget", "2", "--hidden-size", "24", "--run-dir", given, *small, check=0)
    assert "model size" not in proc.stderr.decode()
    assert load_checkpoint(str(given / "latest.pt"))["model_config"]["hidden_size"] == 24
    info = run_cli("info", given, check=0).stdout.decode()
    assert any(line.startswith("model size:") and line.endswith(" given or the default") for line in info.splitlines()), info


def test_a_step_limit_caps_the_steps_and_an_untimeable_candidate_is_not_chosen(sweep):
    fast = {(2, 128): 0.01, (2, 512): 0.04}
    assert autosize.choose(3000, fast)[0] == (2, 512)
    # --max-steps 100 with the budget: 100 steps each, where the big model is ahead
    size, why = autosize.choose(3000, {(2, 128): 0.001, (2, 512): 1.0}, step_cap=100)
    assert size == (2, 512) and "~100 steps" in why
    # a candidate whose step failed (out of memory) is infinitely slow: never chosen while another was timed
    assert autosize.choose(3000, {(2, 128): 0.05, (2, 512): float("inf")})[0] == (2, 128)


def test_start_up_already_spent_is_not_counted_as_steps(sweep):
    # 60 s with 20 s gone: the small model's 760 steps beat the big one's 95, where 60 s would give the big its 142
    slow = {(2, 128): 0.05, (2, 512): 0.4}
    assert autosize.choose(60, slow, step_cap=None, spent=0.0)[1].count("~1,140 steps") == 1
    size, why = autosize.choose(60, slow, spent=20.0)
    assert size == (2, 128) and "~760 steps" in why and "~95 steps" in why and "40 s of it left after start-up" in why
    fast = {(2, 128): 0.01, (2, 512): 0.04}
    assert autosize.choose(600, fast)[0] == (2, 512)
    assert autosize.choose(600, fast, spent=599.99)[0] == (2, 128)  # almost nothing left: fewer than one step each


def test_a_budget_too_short_for_one_step_takes_the_fastest_candidate(sweep):
    # no extrapolation below one step: a size that cannot take a step learns nothing, whatever its sweep says
    size, why = autosize.choose(0.02, {(2, 128): 0.05, (2, 512): 0.4})
    assert size == (2, 128) and "2x512: ~0 steps -> no whole step" in why
    # neither gets a step: equal hopes, and the faster one is taken, whatever its size
    size, why = autosize.choose(0.5, {(2, 128): 0.6, (2, 512): 0.55})
    assert size == (2, 512) and why.count("no whole step") == 2
    # one whole step of the small model against none of the big: the small one
    assert autosize.choose(1.1, {(2, 128): 1.0, (2, 512): 8.0})[0] == (2, 128)


def test_choosing_subtracts_what_the_command_spent_before_and_during_the_timing(sweep):
    from charrnn.precision import plan_for

    model_config = ModelConfig(vocab_size=20, hidden_size=512, num_layers=2)
    cfg = TrainConfig(batch_size=2, seq_len=8, time_budget=100.0, precision="fp32")
    calls = []
    elapsed = lambda: calls.append(1) or 30.0  # noqa: E731
    L, H, why = autosize.choose_model_size(model_config, cfg, torch.device("cpu"), OneRank, plan_for,
                                           elapsed=elapsed)
    assert calls == [1] and "70 s of it left after start-up" in why, why


def test_a_saved_config_leaves_the_size_to_the_budget_unless_it_was_given(tmp_path):
    """--save-config of a budget run without size options writes the size lines as comments, so that training
    from the file chooses the size again; with a size given, the file pins it."""
    from conftest import run_cli

    from charrnn.configfile import read_config

    auto, pinned = tmp_path / "auto.toml", tmp_path / "pinned.toml"
    run_cli("train", "--time-budget", "60", "--save-config", auto, check=0)
    assert "# hidden_size = 512  (chosen for the time budget" in auto.read_text()
    values = read_config(str(auto))
    assert "hidden_size" not in values and "num_layers" not in values and values["time_budget"] == 60
    run_cli("train", "--time-budget", "60", "--hidden-size", "256", "--save-config", pinned, check=0)
    assert read_config(str(pinned))["hidden_size"] == 256 and read_config(str(pinned))["num_layers"] == 2
