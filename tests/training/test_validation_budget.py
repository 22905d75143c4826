"""Issue 15: validation whose cost is bounded (--val-chars: a fixed slice of the validation split, sized to the run
by default; `eval` still scores a whole file, with progress on stderr) and a time budget that means wall time (the
stop rule keeps room for the final validation and save; tested with a fake clock and a slow validation injected
through the trainer's hooks, never with timing assertions)."""

from __future__ import annotations

import copy

import io
import json
import logging
import math

import pytest

import charrnn
from charrnn.store.checkpoint import load_checkpoint
from charrnn.config import (EVAL_EVERY_MAX, VAL_CHARS_CAP, VAL_CHARS_FLOOR, ModelConfig, TrainConfig,
                            auto_eval_every, auto_val_chars, parse_val_chars)
from charrnn.cli.configfile import config_toml, read_config
from charrnn.errors import UsageError
from charrnn.inference.evaluation import score_ids, scored_chars, windows
from charrnn.inference.progress import ScoreProgress
from charrnn.training.resume import merge_configs
from charrnn.model.runtime import build_model
from charrnn.training.schedule import EVAL_SPEEDUP, EndCost, StopRule
from charrnn.training.trainer import TrainHooks

from conftest import assert_one_line_error, cli_env, make_corpus, run_cli
from reference import manual_nats

TINY_SHAKESPEARE_VAL = 111_540  # its validation split with --val-frac 0.1 --test-frac 0 (the README's numbers)


# -- --val-chars: the rule, the option, the config file ---------------------------------------------------------

def test_auto_val_chars_is_a_quarter_of_the_training_between_evaluations_within_a_floor_and_a_cap():
    defaults = TrainConfig()
    assert auto_val_chars(EVAL_EVERY_MAX, defaults.batch_size, defaults.seq_len) == VAL_CHARS_FLOOR == 250_000
    assert auto_val_chars(1000, 32, 128) == 1000 * 32 * 128 // 4
    assert auto_val_chars(10_000, 64, 256) == VAL_CHARS_CAP == 2_000_000
    assert auto_val_chars(1, 1, 1) == VAL_CHARS_FLOOR
    # tiny-shakespeare's split is scored whole at the defaults, so the README's quality numbers keep their meaning
    auto = auto_val_chars(EVAL_EVERY_MAX, defaults.batch_size, defaults.seq_len)
    assert scored_chars(TINY_SHAKESPEARE_VAL, defaults.batch_size, auto) == TINY_SHAKESPEARE_VAL - 1
    # a 1 GB corpus's 5 % split (50 M characters) is not: at most the cap
    assert scored_chars(50_000_000, defaults.batch_size, auto) <= 250_000


def test_val_chars_option_and_config_values():
    assert parse_val_chars("auto") is None and parse_val_chars("ALL") == 0 and parse_val_chars("5000") == 5000
    assert parse_val_chars("1,000,000") == 1_000_000
    with pytest.raises(UsageError, match="--val-chars must be auto, all or a number"):
        parse_val_chars("lots")
    with pytest.raises(UsageError, match=r"--val-chars must be >= 0 \(0 or all: the whole split"):
        TrainConfig(val_chars=-5).validate()
    TrainConfig(val_chars=0).validate()
    TrainConfig(val_chars=None).validate()


def test_val_chars_in_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    for text, value in (('val_chars = "all"\n', 0), ('val_chars = "auto"\n', None), ("val_chars = 4096\n", 4096)):
        path.write_text(text, encoding="utf-8")
        assert read_config(str(path)) == {"val_chars": value}
    for text in ("val_chars = -1\n", 'val_chars = "lots"\n', "val_chars = 1.5\n"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError, match=f"config file {path}: val_chars"):
            read_config(str(path))
    assert 'val_chars = "auto"' in config_toml(ModelConfig(), TrainConfig())  # --save-config writes it readably


@pytest.mark.parametrize("value, needle", [("-5", "--val-chars must be >= 0"), ("lots", "--val-chars must be auto")])
def test_bad_val_chars_exits_2_before_anything_is_created(tmp_path, value, needle):
    home = tmp_path / "home"
    corpus = make_corpus(tmp_path / "c.txt")
    proc = run_cli("train", corpus, "--val-chars", value, "--run-dir", tmp_path / "run",
                   env=cli_env(OMP_NUM_THREADS=1, CHARRNN_HOME=home), timeout=60)
    assert_one_line_error(proc, 2, needle)
    assert not (tmp_path / "run").exists() and not home.exists()


def test_val_chars_may_change_on_resume_and_auto_keeps_what_the_run_decided():
    saved = {"model_config": charrnn.config.to_dict(ModelConfig(vocab_size=5)),
             "train_config": charrnn.config.to_dict(TrainConfig(val_chars=250_000))}
    _, kept = merge_configs(saved, ModelConfig(), TrainConfig(eval_every=1000), {"eval_every"})
    assert kept.val_chars == 250_000 and kept.eval_every == 1000  # the slice stays the one earlier scores used
    _, changed = merge_configs(saved, ModelConfig(), TrainConfig(val_chars=0), {"val_chars"})
    assert changed.val_chars == 0


# -- --eval-every auto: every 2 passes over the training split, at most every 200 steps ----------------------------

def test_auto_eval_every_is_two_passes_between_a_floor_and_200_steps():
    assert TrainConfig().eval_every is None  # auto
    assert auto_eval_every(7) == 14  # 30,000 characters at B32 T128: a pass is 7 steps
    assert auto_eval_every(22) == 44  # 100,000
    assert auto_eval_every(220) == auto_eval_every(10**6) == EVAL_EVERY_MAX == 200  # 1 MB and more: as before
    assert auto_eval_every(1) == 5


def _recorded(run_dir) -> dict:
    return load_checkpoint(str(run_dir / "latest.pt"))["train_config"]


def test_a_short_corpus_is_evaluated_every_two_passes_and_sampled_about_every_200_steps(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 6000)  # 5,400 training characters: 84 steps a pass at B4 T16
    values = dict(batch_size=4, seq_len=16, warmup_steps=2, val_frac=0.1, test_frac=0.0, max_steps=400)
    charrnn.train(str(corpus), ModelConfig(hidden_size=8, num_layers=1), TrainConfig(**values),
                  run_dir=str(tmp_path / "auto"), progress=False)
    saved = _recorded(tmp_path / "auto")
    per_pass = (5400 - 1) // (4 * 16)
    assert saved["eval_every"] == 2 * per_pass == 168 < EVAL_EVERY_MAX
    assert saved["sample_every"] == 336  # the first multiple of the evaluations' steps from 200 on
    rows = [json.loads(line) for line in open(tmp_path / "auto" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "val_loss" in r] == [168, 336, 400]
    samples = (tmp_path / "auto" / "samples.txt").read_text(encoding="utf-8")
    assert "--- step 336," in samples and "--- step 168," not in samples
    # what the user sets is kept: an explicit --eval-every, an explicit --sample-every
    charrnn.train(str(corpus), ModelConfig(hidden_size=8, num_layers=1),
                  TrainConfig(**{**values, "max_steps": 20}, eval_every=10, sample_every=0),
                  run_dir=str(tmp_path / "given"), progress=False)
    assert (_recorded(tmp_path / "given")["eval_every"], _recorded(tmp_path / "given")["sample_every"]) == (10, 0)
    charrnn.train(str(corpus), ModelConfig(hidden_size=8, num_layers=1),
                  TrainConfig(**{**values, "max_steps": 20}, sample_every=7), run_dir=str(tmp_path / "samples"),
                  progress=False)
    assert (_recorded(tmp_path / "samples")["eval_every"], _recorded(tmp_path / "samples")["sample_every"]) == (168, 7)


def test_auto_eval_every_is_decided_once_and_a_resume_keeps_it(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 6000)
    common = ["--hidden-size", "8", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16", "--val-frac",
              "0.1", "--test-frac", "0", "--warmup-steps", "2", "-q", "--run-dir", tmp_path / "run"]
    env = cli_env(OMP_NUM_THREADS=1, CHARRNN_HOME=tmp_path / "home")
    assert run_cli("train", corpus, *common, "--max-steps", "170", env=env, timeout=120).returncode == 0
    assert _recorded(tmp_path / "run")["eval_every"] == 168
    proc = run_cli("train", corpus, *common, "--max-steps", "340", "--resume", tmp_path / "run" / "latest.pt",
                   env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "val_loss" in r] == [168, 170, 336, 340]


# -- the slice: evenly spaced windows, the same every time --------------------------------------------------------

def test_windows_are_evenly_spaced_disjoint_and_inside_the_text():
    for n, streams, limit in ((1000, 4, 100), (1000, 7, 999), (5000, 32, 640), (100, 8, 5), (10, 1, 3)):
        [(first, stride, count, length)] = windows(n, streams, limit)
        assert first == 0 and count == min(streams, limit) and length == limit // count
        assert count * length <= limit and stride >= length
        starts = [j * stride for j in range(count)]
        assert starts[-1] + length <= n  # the last prediction is inside the text
        if count > 1:  # and the windows reach (almost) its end: they are spread over the whole split
            assert n - (starts[-1] + length) < count
    # no limit, or one at least as large as the text: the whole text, as before
    assert windows(1000, 4, None) == windows(1000, 4, 0) == windows(1000, 4, 5000) == [(0, 250, 4, 250)]
    assert windows(1001, 4, None) == [(0, 250, 4, 250), (1000, 1, 1, 1)]


def test_score_ids_with_a_limit_scores_exactly_its_windows_each_from_a_zero_state(tiny_run):
    model, vocab = build_model(load_checkpoint(str(tiny_run / "latest.pt")))
    ids = vocab.encode("the quick brown fox jumps over the lazy dog. " * 30)
    n = len(ids) - 1
    [(first, stride, count, length)] = windows(n, 4, 200)
    want = sum(manual_nats(model, ids[first + j * stride : first + j * stride + length + 1]) for j in range(count))
    score = score_ids(model, ids, streams=4, chunk=16, limit=200)
    assert score.chars == count * length == scored_chars(len(ids), 4, 200) == 200
    assert score.nats == pytest.approx(want, rel=1e-5)
    assert score_ids(model, ids, streams=4, chunk=7, limit=200).nats == pytest.approx(score.nats, rel=1e-5)
    # under two ranks each scores its share: together, the one-process score
    halves = [score_ids(model, ids, streams=4, chunk=16, limit=200, rank=r, world=2) for r in (0, 1)]
    assert sum(h.chars for h in halves) == 200 and sum(h.nats for h in halves) == pytest.approx(score.nats, rel=1e-5)
    whole = score_ids(model, ids, streams=4, chunk=16)
    assert score_ids(model, ids, streams=4, chunk=16, limit=10 * n).nats == whole.nats and whole.chars == n
    seen = []
    score_ids(model, ids, streams=4, chunk=16, limit=200, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 200


def test_training_scores_the_same_slice_at_every_evaluation_and_says_how_many(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c.txt", 6000)
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=6, eval_every=3, val_frac=0.2, test_frac=0.0,
                      val_chars=100, warmup_steps=2)
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = logging.getLogger("charrnn")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        result = charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=1), cfg,
                               run_dir=str(tmp_path / "r"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "validation: 100 of the split's 1,199 characters at each evaluation" in logged.getvalue()
    err = capsys.readouterr().err
    assert err.count("validation on 100 of 1,199 characters") == 1  # the final one (step 3's is too quick to say)
    assert "final validation on 100 of 1,199 characters" in err
    ckpt = load_checkpoint(result.latest)
    assert ckpt["train_config"]["val_chars"] == 100
    model, vocab = build_model(ckpt)
    val = vocab.encode(corpus.read_text()[4800:])
    assert result.last_val_loss == pytest.approx(score_ids(model, val, streams=4, chunk=16, limit=100).nats_per_char,
                                                 rel=1e-5)
    # auto is decided once and recorded: a resume keeps it
    auto = charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=1),
                         TrainConfig(batch_size=4, seq_len=16, max_steps=2, val_frac=0.2, test_frac=0.0),
                         run_dir=str(tmp_path / "auto"), progress=False)
    assert load_checkpoint(auto.latest)["train_config"]["val_chars"] == VAL_CHARS_FLOOR
    assert auto.last_val_loss is not None


# -- eval: the whole text, with progress on stderr for a long one ------------------------------------------------

def test_score_progress_off_a_terminal_is_a_line_per_tenth_once_it_has_run_a_while():
    now = [0.0]
    stream = io.StringIO()
    with ScoreProgress(1000, "big.txt", delay=2.0, stream=stream, clock=lambda: now[0]) as shown:
        shown.update(150)  # under the delay: a short text says nothing
        now[0] = 2.5
        for chars in (160, 390, 400, 1000):
            shown.update(chars)
    assert stream.getvalue().splitlines() == [
        "charrnn: scoring big.txt: 10% (160 of 1,000 characters)",
        "charrnn: scoring big.txt: 30% (390 of 1,000 characters)",
        "charrnn: scoring big.txt: 40% (400 of 1,000 characters)",
        "charrnn: scoring big.txt: 100% (1,000 of 1,000 characters)",
    ]
    quiet = io.StringIO()
    with ScoreProgress(1000, "x", enabled=False, delay=0, stream=quiet) as shown:
        shown.update(1000)
    assert quiet.getvalue() == ""


def test_score_progress_on_a_terminal_is_a_bar_of_characters():
    stream = io.StringIO()
    with ScoreProgress(1000, "big.txt", delay=0, stream=stream, terminal=True) as shown:
        shown.update(400)
        assert shown.bar is not None and shown.bar.n == 400
        shown.update(1000)
    assert "scoring big.txt" in stream.getvalue()


def test_eval_scores_the_whole_file_and_keeps_stdout_for_results(tiny_run, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("the lazy dog sleeps in warm sun.\n" * 40, encoding="utf-8")
    proc = run_cli("eval", tiny_run, text, "--json", check=0)
    result = __import__("json").loads(proc.stdout)
    assert result["chars"] == len(text.read_text()) - 1 and math.isfinite(result["nats_per_char"])


# -- a time budget is wall time -------------------------------------------------------------------------------------

def test_stop_rule_counts_the_overhead_and_the_schedule_spans_the_training_it_leaves():
    rule = StopRule.for_run(TrainConfig(time_budget=100), 10)
    assert rule.reason(5, 80.0) is None and rule.reason(5, 80.0, overhead=20.0) == "time_budget"
    assert rule.reason(5, 79.9, overhead=20.0) is None
    assert rule.progress(5, 40.0, overhead=20.0) == pytest.approx(0.5)  # 40 s of the 80 s left for training
    assert rule.progress(5, 1.0, overhead=150.0) == 1.0  # nothing left: at the floor
    assert StopRule.for_run(TrainConfig(max_steps=10), 10).reason(3, 1e9, overhead=1e9) is None  # no budget


def test_end_cost_learns_a_step_and_an_evaluation_from_the_training_clock():
    cost = EndCost(val_chars=6400, chars_per_step=64, save_guess=0.5)
    assert cost.seconds() == 0.5  # nothing timed yet: the save guess alone
    cost.observe(30.0)  # the first step pays one-time costs: not counted
    assert cost.step_seconds is None
    cost.observe(31.0)
    assert cost.step_seconds == 1.0
    # not yet timed, the final validation is guessed from the step time: 100 steps' worth of characters, scored
    # EVAL_SPEEDUP times faster, and the save
    assert cost.seconds() == pytest.approx(1.0 + 100 / EVAL_SPEEDUP + 0.5)
    cost.busy("eval")  # this iteration evaluates: the next step's time includes it
    cost.busy("other")  # (a sample besides changes nothing)
    cost.observe(31.0 + 1.0 + 7.0)
    assert cost.end_seconds == pytest.approx(7.0) and cost.step_seconds == 1.0
    assert cost.seconds() == pytest.approx(8.0) and cost.seconds(twice=True) == pytest.approx(15.0)
    cost.busy("other")  # a save or sample alone: neither a step's time nor an evaluation's
    cost.observe(39.0 + 1.0 + 0.4)
    assert cost.end_seconds == pytest.approx(7.0) and cost.step_seconds == 1.0
    cost.observe(40.4 + 2.0)
    assert cost.step_seconds == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)


def test_the_end_is_sized_from_the_step_times_now_so_a_run_that_gets_busier_stops_sooner():
    """Injected costs: 1 s steps and an evaluation that adds 5 s; then the machine gets busier and steps take 2 s.
    The end kept in hand grows with the step time now (the evaluation scales with it) and with how much steps
    vary, so the stop rule stops a budget run sooner than the quiet estimate would."""
    def steady(cost, start, seconds, n):
        for i in range(n):
            cost.observe(start + (i + 1) * seconds)
        return start + n * seconds

    quiet = EndCost(val_chars=6400, chars_per_step=64, save_guess=0.5)
    quiet.observe(0.0)  # the first step: not counted
    now = steady(quiet, 0.0, 1.0, 10)
    quiet.busy("eval")
    now += 1.0 + 5.0
    quiet.observe(now)
    assert quiet.seconds() == pytest.approx(6.0) and quiet.spread == 0.0
    loaded = copy.deepcopy(quiet)
    steady(loaded, now, 2.0, 1)  # one step at twice the time: the latest step, at once
    assert loaded.step_now() == 2.0
    assert loaded.seconds() >= 2.0 + 5.0 * 2.0  # the evaluation, 5 steps' worth, at the step time now
    assert loaded.seconds() > 2.0 + 10.0  # and a margin: steps vary now
    steady(quiet, now, 1.0, 1)
    assert quiet.seconds() == pytest.approx(6.0)  # steady conditions: no margin, nothing rescaled

    rule = StopRule.for_run(TrainConfig(time_budget=100), 10)
    startup = 2.0
    assert rule.reason(50, 90.0, overhead=startup + quiet.seconds()) is None  # 98 s: one more step fits
    assert rule.reason(50, 90.0, overhead=startup + loaded.seconds()) == "time_budget"  # 104+ s: it does not
    # the moving average alone (what the end was sized from before) would have gone on
    assert rule.reason(50, 90.0, overhead=startup + loaded.step_seconds + loaded.end_seconds) is None


class FakeTime(TrainHooks):
    """The trainer's clock, advanced by hand: each step takes `step` seconds, each validation `validation(chars)`."""

    def __init__(self, step=1.0, validation=lambda chars: 10.0):
        self.now, self.step_seconds, self.validation_seconds = 1000.0, step, validation
        self.validations = []

    def clock(self) -> float:
        return self.now

    def after_step(self, trainer) -> None:
        self.now += self.step_seconds

    def validating(self, trainer) -> None:
        from charrnn.inference.evaluation import scored_chars

        chars = scored_chars(len(trainer.run_.splits.val), trainer.cfg.batch_size, trainer.cfg.val_chars)
        self.validations.append((trainer.step, self.now))
        self.now += self.validation_seconds(chars)


def _budget_run(tmp_path, name, budget, startup=5.0, resume=None, **extra):
    corpus = tmp_path / "c.txt"
    if not corpus.exists():
        make_corpus(corpus, 6000)
    clock = extra.pop("clock", None) or FakeTime()
    values = dict(batch_size=4, seq_len=16, eval_every=10, val_frac=0.2, test_frac=0.0, warmup_steps=2,
                  time_budget=budget, max_steps=100_000, sample_every=0)
    values.update(extra)
    result = charrnn.train(str(corpus), ModelConfig(hidden_size=8, num_layers=1), TrainConfig(**values),
                           run_dir=str(tmp_path / name), progress=False, hooks=clock, started=clock.now - startup,
                           resume=resume, explicit=set(values) if resume else None)
    return result, clock


@pytest.mark.parametrize("eval_every, validation", [(10, 5.0), (7, 5.0), (3, 2.0), (1000, 5.0)])
def test_a_budget_run_ends_within_its_budget_with_the_final_validation_and_the_start_up(tmp_path, eval_every,
                                                                                        validation):
    """Steps of 1 s, validations of `validation` s, 5 s of start-up, a 50 s budget: the whole command (its wall
    time on the fake clock) fits in the budget, and stops no earlier than a step and two validations before it (an
    evaluation due near the end becomes the final one rather than leaving two to pay for)."""
    result, clock = _budget_run(tmp_path, "run", 50.0, eval_every=eval_every,
                                clock=FakeTime(validation=lambda chars: validation))
    assert result.stopped_by == "time_budget"
    assert result.wall == clock.now - (1000.0 - 5.0)  # the command's time, start-up included
    assert result.wall <= 50.0
    if eval_every < 1000:  # with no earlier evaluation the final one is guessed (next test)
        assert result.wall >= 50.0 - 1.0 - 2 * validation
    assert result.elapsed == pytest.approx(result.wall - 5.0 - validation)  # training time leaves out the end
    assert clock.validations[-1][0] == result.step  # the final validation, after the last step
    saved = load_checkpoint(result.latest)["progress"]
    assert saved["elapsed"] == result.elapsed and saved["stopped_by"] == "time_budget"
    from charrnn.store.runs import read_meta, run_state

    assert run_state(read_meta(result.latest)) == "finished"  # though its training time is short of the budget


def test_before_any_evaluation_is_timed_the_final_one_is_guessed_from_the_training_speed(tmp_path):
    """No evaluation before the end: the final validation is guessed at EVAL_SPEEDUP times the training speed per
    character. A validation that is really 3x faster than that fits; the budget is not given away wholesale."""
    def validation(chars):  # 3x faster per character than a training step (1 s for 64 characters)
        return chars / 64 / 3

    result, clock = _budget_run(tmp_path, "run", 50.0, eval_every=100_000, clock=FakeTime(validation=validation))
    chars = scored_chars(1200, 4, load_checkpoint(result.latest)["train_config"]["val_chars"])
    assert chars == 1199 and len(clock.validations) == 1
    assert 50.0 - 1.0 - chars / 64 / EVAL_SPEEDUP - 1.0 <= result.wall <= 50.0


def test_a_run_whose_start_up_took_the_whole_budget_still_takes_a_step_and_saves(tmp_path):
    result, clock = _budget_run(tmp_path, "run", 10.0, startup=30.0)
    assert result.step == 1 and result.stopped_by == "time_budget" and result.last_val_loss is not None


def test_a_resumed_budget_counts_the_earlier_training_time_and_this_commands_wall_time(tmp_path):
    first, _ = _budget_run(tmp_path, "run", None, max_steps=20)  # 20 steps, one evaluation of 10 s on the way
    assert first.stopped_by == "max_steps" and first.elapsed == pytest.approx(30.0)
    result, clock = _budget_run(tmp_path, "run", 70.0, resume=str(tmp_path / "run"))
    assert result.elapsed_before == pytest.approx(30.0) and result.stopped_by == "time_budget"
    assert result.step > 20
    assert 70.0 - 1.0 - 2 * 10.0 <= result.elapsed_before + result.wall <= 70.0
