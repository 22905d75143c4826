"""The training loop's policies as in-process unit tests: the stop rule, the schedule, --dropout auto's probe, resume
(the configuration a resumed run uses; RNG snapshot and restore), the metrics log, the progress display (a bar on a
terminal, plain lines elsewhere), samples while training, and the trainer's fault hooks doing nothing by default."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest
import torch

import charrnn
from charrnn.config import ModelConfig, TrainConfig, auto_dropout
from charrnn.training.decide import PROBE_STEPS, WARMUP_STEPS, DropoutProbe, dropout_for_steps
from charrnn.training.distributed import Dist
from charrnn.errors import UsageError, WriteError
from charrnn.training.progress import ANNOUNCED_CHARS, ProgressDisplay, RateMeter
from charrnn.training.resume import LR_CHANGES, merge_configs, restore_rng, rng_snapshot, schedule_change_warning
from charrnn.store.runlog import MetricsLog, truncate_metrics
from charrnn.training.samplelog import SAMPLES, SampleLog, Sampler, read_entries
from charrnn.training.schedule import DEFAULT_EPOCHS, StopRule, learning_rate

from conftest import make_corpus


# -- the stop rule -----------------------------------------------------------------------------------------------

def test_stop_rule_steps_epochs_budget_and_the_default():
    assert StopRule.for_run(TrainConfig(max_steps=50), 10).total_steps == 50
    assert StopRule.for_run(TrainConfig(epochs=2.5), 10).total_steps == 25
    assert StopRule.for_run(TrainConfig(epochs=2, max_steps=15), 10).total_steps == 15  # the smaller
    assert StopRule.for_run(TrainConfig(epochs=0.01), 10).total_steps == 1  # at least one step
    default = StopRule.for_run(TrainConfig(), 10)
    assert default.total_steps == DEFAULT_EPOCHS * 10 and default.budget is None
    budget = StopRule.for_run(TrainConfig(time_budget=60), 10)
    assert budget.total_steps is None and budget.horizon is None

    rule = StopRule.for_run(TrainConfig(max_steps=20, epochs=5, time_budget=30), 10)
    assert rule.reason(19, 29.9) is None
    assert rule.reason(20, 0.0) == "max_steps"
    assert rule.reason(3, 30.0) == "time_budget"
    assert StopRule.for_run(TrainConfig(epochs=1, max_steps=100), 10).reason(10, 0) == "epochs"


def test_schedule_progress_is_the_further_of_steps_and_time():
    rule = StopRule.for_run(TrainConfig(max_steps=100, time_budget=10), 10)
    assert rule.progress(50, 1.0) == 0.5
    assert rule.progress(10, 8.0) == 0.8
    assert StopRule.for_run(TrainConfig(max_steps=100, schedule_steps=400), 10).progress(100, 0) == 0.25


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, min_lr_frac=0.1)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 9, 0.0) == pytest.approx(1e-2)
    assert learning_rate(cfg, 50, 0.5) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
    assert learning_rate(cfg, 100, 1.0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100, 7.0) == pytest.approx(1e-3)  # past the end: stays at the floor


# -- --dropout auto --------------------------------------------------------------------------------------------

def test_dropout_for_a_known_number_of_steps():
    rate, why = dropout_for_steps(300, 100)
    assert rate == auto_dropout(3.0) and "3.0 passes" in why


def test_dropout_probe_times_steps_after_a_warm_up_and_decides_once():
    probe = DropoutProbe(first_step=0, budget=100.0, total_steps=None, batches_per_epoch=50, chars_per_step=64)
    seconds_per_step = 0.1
    decided = None
    for step in range(1, WARMUP_STEPS + PROBE_STEPS + 1):
        elapsed = 5.0 + step * seconds_per_step  # a slow first step would not count
        decided = probe.observe(step, elapsed)
        if step < WARMUP_STEPS + PROBE_STEPS:
            assert decided is None
    planned = (WARMUP_STEPS + PROBE_STEPS) + (100.0 - (5.0 + (WARMUP_STEPS + PROBE_STEPS) * 0.1)) / 0.1
    assert decided[0] == auto_dropout(planned / 50)
    assert "640 chars/s" in decided[1]


def test_dropout_probe_is_capped_by_a_step_limit():
    probe = DropoutProbe(first_step=10, budget=1e6, total_steps=100, batches_per_epoch=50, chars_per_step=64)
    decided = None
    for step in range(11, 11 + WARMUP_STEPS + PROBE_STEPS):
        decided = probe.observe(step, step * 0.01) or decided
    assert decided[0] == auto_dropout(100 / 50)


# -- resume ----------------------------------------------------------------------------------------------------

def _saved(**train):
    return {"model_config": dataclasses.asdict(ModelConfig(hidden_size=32, vocab_size=9, dropout=0.1)),
            "train_config": dataclasses.asdict(TrainConfig(max_steps=10, lr=3e-3, **train))}


def test_resume_takes_the_checkpoints_configuration_with_allowed_changes():
    model, cfg = merge_configs(_saved(), ModelConfig(hidden_size=999), TrainConfig(max_steps=40, lr=1.0, batch_size=7),
                               explicit={"max_steps"})
    assert model.hidden_size == 32 and model.dropout == 0.1
    assert cfg.max_steps == 40 and cfg.lr == 3e-3 and cfg.batch_size == TrainConfig().batch_size


def test_resume_refuses_set_differences_and_names_them():
    with pytest.raises(UsageError, match=r"--hidden-size 64 \(checkpoint has 32\)"):
        merge_configs(_saved(), ModelConfig(hidden_size=64), TrainConfig(), explicit={"hidden_size"})
    with pytest.raises(UsageError, match="--allow-lr-change"):
        merge_configs(_saved(), ModelConfig(), TrainConfig(lr=1e-2), explicit={"lr"})
    _, cfg = merge_configs(_saved(), ModelConfig(), TrainConfig(lr=1e-2), explicit={"lr"}, allow_lr_change=True)
    assert cfg.lr == 1e-2 and "lr" in LR_CHANGES
    # --dropout auto on resume accepts the rate the run decided
    model, _ = merge_configs(_saved(), ModelConfig(dropout=None), TrainConfig(), explicit={"dropout"})
    assert model.dropout == 0.1


def test_schedule_change_warning_only_when_the_horizon_moves_ahead_of_the_step():
    assert schedule_change_warning({"schedule_steps": 100}, 100, 50) is None
    assert "200 steps instead of 100" in schedule_change_warning({"schedule_steps": 100}, 200, 50)
    assert schedule_change_warning({"schedule_steps": 100}, 200, 300) is None


def test_rng_snapshot_and_restore_repeat_the_same_draws():
    cpu = torch.device("cpu")
    torch.manual_seed(5)
    saved = rng_snapshot(Dist(), cpu)
    first = torch.rand(4)
    torch.rand(100)  # the generator moves on
    restore_rng(saved, Dist(), cpu)
    assert torch.equal(torch.rand(4), first)
    assert set(saved) == {"torch"}  # a single CPU process keeps only torch's generator


# -- the metrics log -------------------------------------------------------------------------------------------

def test_metrics_log_appends_rows_and_truncates_past_a_resume_point(tmp_path):
    log = MetricsLog(str(tmp_path)).open()
    for step in (1, 2, 3):
        log.row({"step": step, "loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by a kill
    MetricsLog(str(tmp_path)).open(keep_upto=2).close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert not list(tmp_path.glob(".tmp-*"))  # rewritten by the atomic writer, nothing left behind


def test_metrics_log_write_failure_is_one_user_error_or_held_for_the_ranks(tmp_path):
    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    log = MetricsLog(str(tmp_path))
    log._file = Full()
    with pytest.raises(WriteError, match="disk full"):
        log.row({"step": 1})
    held = MetricsLog(str(tmp_path), hold_failures=True)
    held._file = Full()
    held.row({"step": 1})  # under torch.distributed: raised on every rank at the next save, not here
    assert isinstance(held.failure, WriteError)
    held.row({"step": 2})  # nothing more is written after a failure
    assert MetricsLog(str(tmp_path), enabled=False).open()._file is None  # ranks other than 0 write nothing


def test_truncate_metrics_of_a_missing_file_does_nothing(tmp_path):
    truncate_metrics(str(tmp_path / "none.jsonl"), 3)
    assert not (tmp_path / "none.jsonl").exists()


# -- the progress display ---------------------------------------------------------------------------------------

def test_rate_meter_updates_once_a_second_of_steps_has_passed():
    now = [0.0]
    meter = RateMeter(chars_per_step=100, clock=lambda: now[0])
    now[0] = 0.5
    assert meter.tick() == 0.0
    now[0] = 1.0
    assert meter.tick() == pytest.approx(200.0)  # 2 steps x 100 chars in 1 s


def test_progress_display_shows_steps_or_seconds_on_a_terminal():
    stream = io.StringIO()
    bar = ProgressDisplay(True, total_steps=10, budget=None, initial_step=2, stream=stream, terminal=True)
    bar.update(3, 0, 1.0, 2.5, None, 1e-3, 1234.0)
    assert bar.bar.n == 3 and "step 3 of 10" in bar.bar.desc and "loss 2.500" in bar.bar.desc
    assert "1,234 chars/s" in bar.bar.desc
    bar.close()
    timed = ProgressDisplay(True, total_steps=None, budget=60, initial_step=0, stream=stream, terminal=True)
    timed.update(5, 0, 12.7, None, 2.0, 1e-3, 0.0)
    assert timed.bar.n == 12 and "loss -" in timed.bar.desc and "val 2.000" in timed.bar.desc
    assert "13s of 1m00s" in timed.bar.desc  # one clock: the run's elapsed of its budget
    timed.close()
    off = ProgressDisplay(False, total_steps=10, budget=None, stream=stream, terminal=True)
    off.update(1, 0, 0.1, 1.0, None, 1e-3, 0.0)
    off.message("hidden")
    off.close()
    assert "hidden" not in stream.getvalue()


def test_off_a_terminal_progress_is_one_plain_line_per_log_interval_and_messages_on_their_own_lines():
    stream = io.StringIO()
    display = ProgressDisplay(True, total_steps=10, budget=None, log_every=4, stream=stream)  # StringIO: no tty
    assert not display.showing_bar
    for step in range(1, 11):
        if step == 6:
            display.message("a message")
        if step == 8:
            with display.validating(1234):  # quick: no line of its own
                pass
            with display.validating(ANNOUNCED_CHARS, of=10**6):
                pass
        display.update(step, 0, step * 0.5, 2.0 - step / 10, 1.5 if step >= 8 else None, 1e-3, 0.0 if step < 4 else 99.0)
    with display.validating(1234, final=True):
        pass
    display.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no bar frames, no cursor movement
    assert text.splitlines() == [
        "step 4/10  epoch 0  loss 1.600  lr 1.00e-03  99 chars/s  elapsed 2s",
        "a message",
        "validation on 50,000 of 1,000,000 characters ...",
        "step 8/10  epoch 0  loss 1.200  val 1.500  lr 1.00e-03  99 chars/s  elapsed 4s",
        "final validation on 1,234 characters ...",
    ]
    timed = ProgressDisplay(True, total_steps=None, budget=60, log_every=1, stream=stream)
    assert timed.line(3, 1, 0.5, None, None, 3e-3, 0.0) == "step 3  epoch 1  loss -  lr 3.00e-03  - chars/s  elapsed 0s of 1m00s"


def test_on_a_terminal_log_lines_and_messages_go_above_the_bar_not_onto_a_frame():
    stream = io.StringIO()
    logger = logging.getLogger("charrnn")
    handler = logging.StreamHandler(stream)
    saved = logger.handlers[:]
    logger.handlers[:] = [handler]
    try:
        display = ProgressDisplay(True, total_steps=10, budget=None, stream=stream, terminal=True)
        display.update(1, 0, 0.1, 3.0, None, 1e-3, 0.0)
        # while the bar shows, the logger's console handler is tqdm's (it clears the frame, writes, redraws)
        assert handler not in logger.handlers
        with display.validating(500):
            assert display.bar.desc.endswith("(validation on 500 characters)")
        assert "validation" not in display.bar.desc and display.bar.desc.startswith("step 1 of 10")
        logger.warning("dropout 0.05 (auto: about 10 passes)")
        display.message("--- step 1 ---\nsample text")
        display.update(2, 0, 0.2, 2.9, None, 1e-3, 0.0)
        display.close()
        assert logger.handlers == [handler]  # put back when the bar closes
    finally:
        logger.handlers[:] = saved
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    for wanted in ("dropout 0.05 (auto: about 10 passes)", "--- step 1 ---", "sample text"):
        assert wanted in lines, (wanted, lines)  # alone on a line: never glued onto a frame


# -- the loop itself, in process --------------------------------------------------------------------------------

def test_hooks_do_nothing_by_default_and_a_test_hook_sees_each_step(tmp_path):
    from charrnn.training import trainer

    assert type(trainer.hooks) is trainer.TrainHooks
    seen = []

    class Recorder(trainer.TrainHooks):
        def after_step(self, t):
            seen.append((t.step, t.dist.rank))

    corpus = make_corpus(tmp_path / "c.txt", 2000)
    model_config = ModelConfig(hidden_size=16, num_layers=2)
    result = charrnn.train(str(corpus), model_config, TrainConfig(batch_size=4, seq_len=16, max_steps=5),
                           run_dir=str(tmp_path / "r"), progress=False, hooks=Recorder())
    assert seen == [(s, 0) for s in range(1, 6)] and result.step == 5
    # the caller's configs are not written into: the decided dropout and vocabulary live in the checkpoint
    assert model_config.dropout is None and model_config.vocab_size == ModelConfig().vocab_size
    assert charrnn.load_checkpoint(result.latest)["model_config"]["dropout"] is not None


def test_a_nonfinite_step_stops_at_the_next_host_read_naming_its_step(tmp_path, monkeypatch):
    """Without a per-step host read, a NaN at step 3 is noted on the device and the run stops at the next log
    point (step 5) before anything is saved, naming step 3."""
    from charrnn.training import trainer
    from charrnn.errors import NonFiniteLossError
    from charrnn.store.runlog import MetricsLog

    rows = []
    monkeypatch.setattr(MetricsLog, "row", lambda self, row: rows.append(row))  # the run directory goes (below)

    class Poison(trainer.TrainHooks):
        def loss(self, t, loss):
            return loss * float("nan") if t.step + 1 == 3 else loss

    corpus = make_corpus(tmp_path / "c.txt", 2000)
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=20, log_every=5, eval_every=10)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3; no checkpoint was saved"):
        charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=2), cfg, run_dir=str(tmp_path / "r"),
                      progress=False, hooks=Poison())
    assert not (tmp_path / "r").exists()  # nothing was saved: the run removed the directory it had made
    assert rows == []  # the stop came before the step-5 row


# -- agreement across ranks, in process ----------------------------------------------------------------------------

class PeerDist(Dist):
    """Rank 0 of two, whose peer adds `peer` to every all-reduce (no process group needed)."""

    def __init__(self, peer, local_rank=0):
        super().__init__(rank=0, world=2, local_rank=local_rank, backend="gloo", device=torch.device("cpu"))
        self.peer, self.calls = peer, []

    def all_reduce_sum(self, tensor):
        self.calls.append("all_reduce")
        return tensor.add_(torch.as_tensor(self.peer, dtype=tensor.dtype))

    def agree_on_failure(self, failure):
        return failure


def _agree(peer, signum=None):
    from types import SimpleNamespace

    from charrnn.training.signals import Agreement as Trainer, SignalFlag

    signals = SignalFlag()
    signals.signum = signum
    me = SimpleNamespace(dist=PeerDist(peer), check_every_step=False)
    return Trainer.agree(me, torch.tensor(3.0), torch.tensor(False), signals, 10.0)


def test_ranks_agree_on_the_mean_loss_a_nonfinite_step_and_which_signal_came():
    import signal

    from charrnn.errors import EXIT_SIGINT, EXIT_SIGTERM

    quiet = _agree([1.0, 0.0, 0.0, 0.0, 12.0])
    assert quiet.finite and quiet.loss == 2.0 and quiet.stop_code == 0 and quiet.elapsed == 11.0
    assert not _agree([float("nan"), 1.0, 0.0, 0.0, 10.0]).finite  # the peer's step was non-finite
    assert _agree([1.0, 0.0, 1.0, 0.0, 10.0]).stop_code == EXIT_SIGINT  # the peer got SIGINT: 130 here too
    assert _agree([1.0, 0.0, 0.0, 1.0, 10.0]).stop_code == EXIT_SIGTERM
    assert _agree([1.0, 0.0, 0.0, 0.0, 10.0], signal.SIGINT).stop_code == EXIT_SIGINT


def test_first_on_each_node_reads_on_the_nodes_first_rank_then_the_others():
    from charrnn.errors import EXIT_IO, CharrnnError, DataError

    def peers(dist, *theirs):
        """The peer's value in each gather while preparing (rank 1's); this rank's own is recorded in `sent`."""
        queue, dist.sent = list(theirs), []
        dist.gather_while_preparing = lambda value: (dist.sent.append(value), [value, queue.pop(0)])[1]
        return dist

    order = []
    leader = peers(PeerDist([0.0]), None, None)
    assert leader.first_on_each_node(lambda: order.append("read") or 7) == 7
    assert order == ["read"] and leader.sent == [None, None] and leader.calls == []  # no CHARRNN_DIST_TIMEOUT wait
    follower = peers(PeerDist([0.0], local_rank=1), None, None)
    follower.gather_while_preparing = lambda value, inner=follower.gather_while_preparing: (
        order.append("waited"), inner(value))[1]
    follower.first_on_each_node(lambda: order.append("read"))
    assert order == ["read", "waited", "read", "waited"]  # the follower reads only after the leader is done
    failing = peers(PeerDist([0.0]), None)
    with pytest.raises(CharrnnError, match="bad corpus") as info:
        failing.first_on_each_node(lambda: (_ for _ in ()).throw(DataError("bad corpus")))
    assert info.value.exit_code == DataError.exit_code and failing.sent == [("bad corpus", DataError.exit_code)]
    # any exception, not only charrnn's: one line and an exit code, the same on every rank
    for exc, needle, code in ((MemoryError(), "out of memory", 1), (OSError(28, "No space left on device"),
                                                                   "No space left on device", EXIT_IO),
                              (ValueError("odd\nthing"), "ValueError: odd thing", 1)):
        broken = peers(PeerDist([0.0]), None)
        with pytest.raises(CharrnnError) as info:
            broken.first_on_each_node(lambda: (_ for _ in ()).throw(exc))
        assert needle in info.value.message and "\n" not in info.value.message and info.value.exit_code == code
        assert broken.sent == [(info.value.message, code)]
    told = peers(PeerDist([0.0], local_rank=1), ("bad corpus", DataError.exit_code))  # the leader failed
    with pytest.raises(CharrnnError, match="bad corpus") as info:
        told.first_on_each_node(lambda: pytest.fail("a follower must not read after the leader failed"))
    assert info.value.exit_code == DataError.exit_code
    late = peers(PeerDist([0.0]), None, ("cannot read c.txt", 66))  # a follower failed reading after the leader
    with pytest.raises(CharrnnError, match="cannot read c.txt"):
        late.first_on_each_node(lambda: 7)


def test_a_malformed_dist_timeout_is_a_usage_error_when_used_not_at_import(monkeypatch):
    import importlib.util
    import sys
    from datetime import timedelta

    import charrnn.training.distributed as cdist
    from charrnn.errors import UsageError

    for raw in ("soon", "nan", "inf", "0", "-5", "1e99"):
        monkeypatch.setenv("CHARRNN_DIST_TIMEOUT", raw)
        # a fresh copy of the module under another name (charrnn.training.distributed stays as it is): importing it never
        # reads the variable
        spec = importlib.util.spec_from_file_location("charrnn.training._distributed_copy", cdist.__file__)
        copy = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, copy)
        spec.loader.exec_module(copy)
        with pytest.raises(UsageError, match=f"CHARRNN_DIST_TIMEOUT must be a number of seconds > 0.*{raw}"):
            cdist.collective_timeout()
    monkeypatch.setenv("CHARRNN_DIST_TIMEOUT", "90")
    assert cdist.collective_timeout() == timedelta(seconds=90)
    monkeypatch.delenv("CHARRNN_DIST_TIMEOUT")
    assert cdist.collective_timeout() == timedelta(seconds=300)
    assert cdist.PREPARE_TIMEOUT > timedelta(hours=1)  # the wait for the first encode is not that timeout


def test_ranks_other_than_0_filter_the_log_without_changing_the_loggers_level():
    import logging

    from charrnn.training.launch import _quiet_rank

    logger = logging.getLogger("charrnn")
    info = logging.LogRecord("charrnn", logging.INFO, __file__, 1, "hello", None, None)
    warning = logging.LogRecord("charrnn", logging.WARNING, __file__, 1, "careful", None, None)
    assert not _quiet_rank(info) and _quiet_rank(warning)
    assert _quiet_rank not in logger.filters  # only while a run of a rank other than 0 is in progress


# -- samples while training -------------------------------------------------------------------------------------

def _tiny_model(cell: str = "tanh"):
    from charrnn.data.vocab import Vocab
    from charrnn.model.network import CharRNN

    vocab = Vocab("\nabc ")
    torch.manual_seed(3)
    return CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=2, dropout=0.1, cell=cell)), vocab


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_a_training_sample_leaves_the_model_and_torchs_rng_as_they_were(cell):
    model, vocab = _tiny_model(cell)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = Sampler(model.config, vocab, length=50)
    rng = torch.get_rng_state()
    first = sampler(model)
    assert torch.equal(torch.get_rng_state(), rng)  # neither drawn from nor reseeded
    assert model.training  # still in train mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(first) == 50 and set(first) <= set(vocab.chars)
    assert sampler(model) == first  # a fixed prime and seed: the same weights give the same sample
    with torch.no_grad():
        model.head.bias.add_(torch.arange(len(vocab.chars), dtype=torch.float32))
    assert sampler(model) != first  # and new weights a new one
    assert torch.equal(torch.get_rng_state(), rng)


def test_sample_log_appends_entries_and_drops_those_past_a_resume_point(tmp_path):
    log = SampleLog(str(tmp_path)).open()
    assert not (tmp_path / SAMPLES).exists()  # created at the first sample
    log.write(10, 2.5, 10, "ab\nc")
    log.write(20, 2.25, 10, "--- not a header\r\n")
    log.write(30, None, None, "x")
    text = (tmp_path / SAMPLES).read_bytes().decode()
    assert text.startswith("--- step 10, val loss 2.5000 nats/char ---\nab\nc\n\n")
    assert "--- step 20, val loss 2.2500 nats/char (at step 10) ---\n" in text and "--- step 30 ---\nx\n" in text
    assert [step for step, _ in read_entries(text)] == [10, 20, 30]
    SampleLog(str(tmp_path)).open(keep_upto=20)  # a run resumed from step 20
    kept = (tmp_path / SAMPLES).read_bytes().decode()
    assert [step for step, _ in read_entries(kept)] == [10, 20] and kept == text[: text.index("--- step 30")]


def test_sample_log_write_failure_is_one_user_error_or_held_for_the_ranks(tmp_path):
    from charrnn.errors import CannotCreateError

    (tmp_path / SAMPLES).mkdir()  # samples.txt cannot be opened for appending
    with pytest.raises(CannotCreateError, match="cannot write samples file .*samples.txt"):
        SampleLog(str(tmp_path)).write(1, None, None, "x")
    held = SampleLog(str(tmp_path), hold_failures=True)
    held.write(1, None, None, "x")
    assert isinstance(held.failure, CannotCreateError)
    SampleLog(str(tmp_path), enabled=False).write(1, None, None, "x")  # ranks other than 0 write nothing


def _steps_sampled(run_dir) -> list:
    path = run_dir / SAMPLES
    return [step for step, _ in read_entries(path.read_text())] if path.exists() else []


def test_samples_at_each_evaluation_every_n_steps_and_at_the_end_or_never(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 2000)

    def run(name, **extra):
        cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=7, eval_every=3, val_frac=0.1, **extra)
        charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=1), cfg, run_dir=str(tmp_path / name),
                      progress=False)  # --quiet: nothing shown, samples.txt written all the same
        return _steps_sampled(tmp_path / name)

    assert run("default") == [3, 6, 7]  # at each evaluation, the last one included
    assert run("every2", sample_every=2) == [2, 4, 6, 7]
    assert run("off", sample_every=0) == []
    entries = read_entries((tmp_path / "default" / SAMPLES).read_text())
    assert entries[0][1].startswith("--- step 3, val loss ") and len(entries[0][1].split("---\n", 1)[1]) >= 200
    with pytest.raises(UsageError, match="--sample-every must be >= 0"):
        TrainConfig(sample_every=-1).validate()
    assert "sample_every" in charrnn.train.__globals__["RESUMABLE_CHANGES"]


def test_the_last_checkpoint_says_how_the_run_ended_and_info_says_auto_dropout_was_never_decided(tmp_path):
    """A time-budget run that stops before --dropout auto's probe decides (it needs ~25 steps) trained without
    dropout: `info` says so instead of 'not decided yet'."""
    from charrnn.store.info import checkpoint_info, format_info

    corpus = make_corpus(tmp_path / "c.txt", 2000)
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=8, time_budget=3600, eval_every=4, val_frac=0.1)
    result = charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=2), cfg, run_dir=str(tmp_path / "r"),
                           progress=False)
    ckpt = charrnn.load_checkpoint(result.latest)
    assert ckpt["model_config"]["dropout"] is None and ckpt["progress"]["stopped_by"] == "max_steps"
    info = checkpoint_info(result.latest)
    assert info["stopped_by"] == "max_steps"
    assert "dropout auto: the run ended before deciding (trained without dropout)" in format_info(info)
    mid_run = dict(info, stopped_by=None)  # a checkpoint saved before the end (e.g. at a signal)
    assert "dropout auto: not decided yet at this checkpoint (trained without dropout so far)" in format_info(mid_run)
    assert result.wall is not None and result.wall >= result.elapsed and result.elapsed_before == 0.0


# -- the loop's parts, each alone ----------------------------------------------------------------------------------

def test_save_points_are_every_n_steps_or_every_so_many_seconds_of_training_time():
    from charrnn.training.savepoints import SavePoints

    by_steps = SavePoints(steps=5, seconds=None)
    assert [s for s in range(1, 16) if by_steps.due(s, 0.0)] == [5, 10, 15]
    by_time = SavePoints(steps=None, seconds=60.0, elapsed=100.0)  # a resumed run: counted from its elapsed
    assert not by_time.due(7, 159.9) and by_time.due(7, 160.0)
    by_time.saved(160.0)
    assert not by_time.due(8, 219.0) and by_time.due(9, 220.0)
    assert not SavePoints(None, None).due(10, 1e9)  # only at evaluation points
    assert TrainConfig(save_every="90s").save_interval() == (None, 90.0)  # what the trainer builds them from


def test_nonfinite_guard_skips_up_to_the_limit_then_stops_naming_the_step(tmp_path):
    from charrnn.errors import NonFiniteLossError
    from charrnn.training.nonfinite import MAX_SKIPS_IN_A_ROW, NonFiniteGuard

    latest = tmp_path / "latest.pt"
    skipping = NonFiniteGuard("skip", str(latest), torch.device("cpu"))
    for step in range(1, MAX_SKIPS_IN_A_ROW + 1):
        skipping.skip_or_stop(step)  # skipped: returns
    with pytest.raises(NonFiniteLossError, match=f"step 11 \\({MAX_SKIPS_IN_A_ROW + 1} steps in a row\\); no "
                                                 f"checkpoint was saved"):
        skipping.skip_or_stop(MAX_SKIPS_IN_A_ROW + 1)
    skipping.step_taken()
    assert skipping.skipped_in_a_row == 0
    latest.write_bytes(b"x")
    stopping = NonFiniteGuard("stop", str(latest), torch.device("cpu"))
    with pytest.raises(NonFiniteLossError, match=f"step 4; the last good checkpoint is {latest}"):
        stopping.skip_or_stop(4)
    # noted on the device, acted on at the next read: the first bad step is the one named
    noted = NonFiniteGuard("stop", str(latest), torch.device("cpu"))
    noted.note(torch.tensor(False), 2)
    noted.check_noted()  # nothing bad yet
    noted.note(torch.tensor(True), 3)
    noted.note(torch.tensor(True), 4)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3;"):
        noted.check_noted()


def test_validation_keeps_the_best_and_the_latest_score():
    from types import SimpleNamespace

    from charrnn.training.validation import Validation

    run = SimpleNamespace(splits=SimpleNamespace(val=[0] * 100), cfg=TrainConfig(batch_size=4, val_chars=None),
                          dist=Dist(), device=torch.device("cpu"))
    val = Validation(run, hooks=None, best=2.0)  # a resumed run's best
    assert val.record(10, 2.5) is False and (val.best, val.last, val.last_step) == (2.0, 2.5, 10)
    assert val.record(20, 1.5) is True and val.best == 1.5 and val.history == [2.5, 1.5]
    assert val.record(30, None) is True and val.last_step == 20  # no validation split: the latest is the best


def test_samples_while_training_are_due_every_n_steps_at_evaluations_by_default_and_at_the_end(tmp_path):
    from types import SimpleNamespace

    from charrnn.training.samplelog import SamplesWhileTraining

    def due(**cfg):
        run = SimpleNamespace(cfg=TrainConfig(eval_every=10, **cfg), dist=Dist(), model_config=ModelConfig(),
                              vocab=None, run_dir=str(tmp_path))
        samples = SamplesWhileTraining(run, display=None)
        return [s for s in range(1, 26) if samples.due(s, final=s == 25)]

    assert due() == [10, 20, 25]
    assert due(sample_every=7) == [7, 14, 21, 25]
    assert due(sample_every=0) == []  # never, not even at the end
    assert not (tmp_path / SAMPLES).exists()
