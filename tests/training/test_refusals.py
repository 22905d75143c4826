"""Issue 16, the first hour: numbers that are not numbers and sizes the machine cannot hold are refused up front
(exit 2, one line naming the option, nothing created or downloaded); a run that fails before its first checkpoint
removes what it created and says so; `--resume corpus.txt` says it is not a checkpoint; under torchrun a usage
error is printed once. Subprocesses through the real CLI where the user-facing behaviour is the point."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import UsageError
from conftest import TINY, assert_one_line_error, cli_env, hang_guard, make_corpus, run_cli

FAULTS = Path(__file__).resolve().parent.parent / "faults.py"


def env(home: Path, **extra) -> dict:
    return cli_env(OMP_NUM_THREADS=1, CHARRNN_HOME=home, **extra)


def nothing_created(home: Path, *paths: Path) -> None:
    assert not home.exists() or not any(home.iterdir()), list(home.iterdir())  # no checkpoints/, no data/
    for path in paths:
        assert not path.exists(), path


# ----------------------------------------------------------------------------------------------------------------
# 1. every number finite and in range, before anything is created or downloaded

HUGE = "9" * 400  # a number past float's range: inf once parsed

BAD_TRAIN_OPTIONS = [
    ("--lr", "nan"), ("--lr", "1e308"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-1"),
    ("--epochs", "nan"), ("--epochs", "inf"), ("--epochs", "0"),
    ("--weight-decay", "nan"), ("--weight-decay", "inf"), ("--weight-decay", "-1"),
    ("--min-lr-frac", "nan"), ("--min-lr-frac", "-1"), ("--min-lr-frac", "2"),
    ("--grad-clip", "nan"), ("--grad-clip", "inf"), ("--grad-clip", "-1"),
    ("--time-budget", HUGE), ("--val-frac", "nan"), ("--test-frac", "inf"),
    ("--seed", str(2**64)), ("--warmup-steps", "-1"), ("--dropout", "nan"),
]


@pytest.mark.parametrize("option, value", BAD_TRAIN_OPTIONS, ids=lambda v: v[:12])
def test_bad_number_on_the_command_line_exits_2_before_anything_is_created(tmp_path, option, value):
    home = tmp_path / "home"
    # a named corpus that is not downloaded yet: refused before the download too
    proc = run_cli("train", "shakespeare", option, value, "--run-dir", tmp_path / "run", env=env(home), timeout=60)
    assert_one_line_error(proc, 2, option, "must be")
    nothing_created(home, tmp_path / "run")


@pytest.mark.parametrize("text, key", [
    ("beta1 = 2.0\n", "beta1"), ("beta2 = 1.0\n", "beta2"), ("lr = nan\n", "lr"), ("lr = inf\n", "lr"),
    ("lr = 1e308\n", "lr"), ("weight_decay = -1\n", "weight_decay"), ("grad_clip = nan\n", "grad_clip"),
    ("epochs = inf\n", "epochs"), ("min_lr_frac = 2\n", "min_lr_frac"), ("time_budget = nan\n", "time_budget"),
    (f"lr = {'1' + '0' * 400}\n", "lr"),
])
def test_bad_number_in_a_config_file_exits_2_naming_the_key(tmp_path, text, key):
    home = tmp_path / "home"
    config = tmp_path / "run.toml"
    config.write_text(text, encoding="utf-8")
    corpus = make_corpus(tmp_path / "c.txt")
    proc = run_cli("train", corpus, "--config", config, "--run-dir", tmp_path / "run", env=env(home), timeout=60)
    assert_one_line_error(proc, 2, f"config file {config}: {key} ")
    nothing_created(home, tmp_path / "run")


def test_the_library_checks_the_same_ranges():
    """TrainConfig.validate for library callers: each listed case is a UsageError naming the option."""
    nan, inf = float("nan"), float("inf")
    cases = {"lr": [nan, inf, -inf, 1e308, 0.0, 11.0], "beta1": [nan, 1.0, -0.1, 2.0], "beta2": [nan, 1.0],
             "weight_decay": [nan, inf, -1.0], "min_lr_frac": [nan, -1.0, 2.0], "grad_clip": [nan, inf, -1.0],
             "epochs": [nan, inf, 0.0, -1.0], "time_budget": [nan, inf, 0.0], "val_frac": [nan, inf, 1.0],
             "test_frac": [nan, -inf], "seed": [2**64, -(2**63) - 1], "max_steps": [0], "keep_last": [-1]}
    for name, values in cases.items():
        for value in values:
            with pytest.raises(UsageError, match=name.replace("_", "-") if name not in ("beta1", "beta2") else name):
                TrainConfig(**{name: value}).validate()
    for name, value in [("hidden_size", 0), ("num_layers", 0), ("dropout", nan), ("dropout", inf)]:
        with pytest.raises(UsageError, match=name.replace("_", "-")):
            ModelConfig(**{name: value}).validate()
    TrainConfig(lr=10.0, beta1=0.0, min_lr_frac=1.0, grad_clip=0.0, weight_decay=0.0, epochs=0.5).validate()


@pytest.mark.parametrize("option, value", [
    ("--temperature", "inf"), ("--temperature", "1e30"), ("--temperature", "nan"), ("--temperature", "1e-300"),
    ("--top-p", "nan"), ("--top-p", "inf"), ("--seed", str(2**64)),
])
def test_bad_sampling_number_exits_2_saying_the_usable_range(tiny_run, tmp_path, option, value):
    proc = run_cli("sample", tiny_run, option, value, "-n", "5", env=env(tmp_path / "home"))
    line = assert_one_line_error(proc, 2, option)
    if option == "--temperature":
        assert "0 (always the most likely character) or from 0.001 to 10" in line, line


# ----------------------------------------------------------------------------------------------------------------
# 2. a model that cannot fit is refused up front, with the estimate


def test_a_huge_hidden_size_is_refused_fast_with_the_estimate(tmp_path):
    home, corpus = tmp_path / "home", make_corpus(tmp_path / "c.txt")
    start = time.monotonic()
    proc = run_cli("train", corpus, "--hidden-size", "99999999", "--device", "cpu", "-q", env=env(home), timeout=60)
    line = assert_one_line_error(proc, 2, "--hidden-size 99999999", "needs about", "GB", "available",
                                 "--no-memory-check")
    assert time.monotonic() - start < 30, line
    nothing_created(home)


def test_memory_estimate_and_the_override(tmp_path, monkeypatch):
    import importlib

    import charrnn

    train_mod = importlib.import_module("charrnn.training.memory")  # the module that checks memory
    model = ModelConfig(hidden_size=512, num_layers=2, vocab_size=65)
    needed, parameters = train_mod.memory_needed(model, TrainConfig(), streams=32)
    assert parameters == 65 * 512 + 3 * 512 * 512 + 2 * 512 + 512 * 65 + 65  # what CharRNN really holds
    assert 16 * parameters < needed < 200 * 10**6  # weights, grads, AdamW moments and one batch: modest
    # Muon (the default for tanh) holds its matrices' stacked gradients, momenta and iterates while it steps
    adamw = train_mod.memory_needed(model, TrainConfig(optimizer="adamw"), streams=32)[0]
    muon = train_mod.memory_needed(model, TrainConfig(optimizer="muon"), streams=32)[0]
    assert needed == muon == adamw + 3 * 512 * 512 * (train_mod.MUON_BYTES - 16) > adamw
    gru = ModelConfig(hidden_size=64, num_layers=2, vocab_size=65, cell="gru")
    assert train_mod.memory_needed(gru, TrainConfig(), 32) == train_mod.memory_needed(
        gru, TrainConfig(optimizer="adamw"), 32)  # auto: AdamW for the gated cells
    corpus = make_corpus(tmp_path / "c.txt")
    small = ModelConfig(hidden_size=16, num_layers=1)
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=2, eval_every=2, warmup_steps=0)
    monkeypatch.setattr(train_mod, "memory_available", lambda device: 1000)  # a machine with 1 kB free
    with pytest.raises(UsageError, match="needs about .* this machine has 0 MB available"):
        charrnn.train(str(corpus), small, cfg, run_dir=str(tmp_path / "refused"), progress=False)
    assert not (tmp_path / "refused").exists()
    result = charrnn.train(str(corpus), small, cfg, run_dir=str(tmp_path / "run"), progress=False,
                           memory_check=False)
    assert result.step == 2


def test_no_memory_check_is_a_train_option(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt")
    run_cli("train", corpus, *TINY, "--max-steps", "2", "--no-memory-check", "-q", "--run-dir", tmp_path / "run",
            env=env(tmp_path / "home"), check=0)
    assert (tmp_path / "run" / "latest.pt").exists()


# ----------------------------------------------------------------------------------------------------------------
# 3. a run that fails before its first checkpoint removes what it created


def with_faults(hooks: dict, *args, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FAULTS), json.dumps(hooks), *map(str, args)], env=env(home),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=hang_guard(timeout))


NAN_AT_1 = {"nan_at": {"steps": [1]}}


def test_nan_at_step_1_removes_the_run_directory_it_made(tmp_path):
    home, corpus = tmp_path / "home", make_corpus(tmp_path / "c.txt")
    run = tmp_path / "new" / "run"  # its parent made for it too
    proc = with_faults(NAN_AT_1, "train", corpus, *TINY, "-q", "--run-dir", run, home=home)
    assert_one_line_error(proc, 1, "non-finite loss at step 1", f"removed the run directory {run}")
    assert not (tmp_path / "new").exists()
    proc = with_faults(NAN_AT_1, "train", corpus, *TINY, "-q", home=home)  # the default: $CHARRNN_HOME/checkpoints
    assert_one_line_error(proc, 1, "removed the run directory")
    nothing_created(home)


def test_a_failed_run_in_an_existing_directory_removes_only_its_own_files(tmp_path):
    home, corpus = tmp_path / "home", make_corpus(tmp_path / "c.txt")
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("the user's own file\n")
    proc = with_faults(NAN_AT_1, "train", corpus, *TINY, "-q", "--run-dir", run, home=home)
    assert_one_line_error(proc, 1, "removed this run's lock, metrics.jsonl from")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_failed_first_save_removes_the_run_directory(tmp_path):
    home, corpus = tmp_path / "home", make_corpus(tmp_path / "c.txt")
    run = tmp_path / "run"
    proc = with_faults({"enospc_after": 100}, "train", corpus, *TINY, "-q", "--max-steps", "3", "--run-dir", run,
                       home=home)
    assert_one_line_error(proc, 74, "disk full", "nothing was saved", f"removed the run directory {run}")
    assert not run.exists()


def test_an_interrupt_before_the_first_save_removes_the_run_directory(tmp_path, caplog):
    """Ctrl-C where no signal handler turns it into a save (the run's setup): KeyboardInterrupt goes on, after
    the run directory is removed and a line says so."""
    import charrnn
    from charrnn.training.trainer import TrainHooks

    class CtrlC(TrainHooks):
        def loss(self, trainer, loss):
            raise KeyboardInterrupt

    corpus = make_corpus(tmp_path / "c.txt")
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="charrnn"), pytest.raises(KeyboardInterrupt):
        charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=1),
                      TrainConfig(batch_size=4, seq_len=16, max_steps=5), run_dir=str(run), progress=False,
                      hooks=CtrlC())
    assert not run.exists()
    assert f"nothing was saved: removed the run directory {run}" in caplog.text


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as at a terminal, even when pytest runs in a background job


def test_a_failed_or_interrupted_resumed_run_keeps_everything(tmp_path):
    home, corpus = tmp_path / "home", make_corpus(tmp_path / "c.txt")
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--max-steps", "4", "--eval-every", "4", "-q", "--run-dir", run,
            env=env(home), check=0)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = with_faults({"nan_at": {"steps": [5]}}, "train", "--resume", run, "--max-steps", "8", "-q",
                       home=home)
    line = assert_one_line_error(proc, 1, "non-finite loss at step 5", "the last good checkpoint is")
    assert "removed" not in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "lock"} == {
        k: v for k, v in before.items() if k != "lock"}
    proc = subprocess.Popen([sys.executable, str(FAULTS), json.dumps({"pause_at": 5}), "train", "--resume", run,
                             "--max-steps", "100", "-q"], env=env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    deadline = time.monotonic() + hang_guard(60)
    while not (run / "paused").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=hang_guard(60))
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 130, "SIGINT")
    assert {"latest.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in run.iterdir()}


# ----------------------------------------------------------------------------------------------------------------
# 4. --resume of a text file


def test_resume_of_a_text_file_says_it_is_not_a_checkpoint(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt")
    proc = run_cli("train", "--resume", corpus, env=env(tmp_path / "home"), cwd=tmp_path)
    assert_one_line_error(proc, 65, f"{corpus} is not a charrnn checkpoint (a text file?)")
    proc = run_cli("sample", corpus, env=env(tmp_path / "home"))
    assert_one_line_error(proc, 65, "is not a charrnn checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# 5. under torchrun a usage error is printed once


def test_usage_error_under_torchrun_is_printed_once(tmp_path):
    from test_distributed import torchrun

    corpus = make_corpus(tmp_path / "c.txt")
    proc = torchrun("train", corpus, "--lr", "nan", "--run-dir", "r", cwd=tmp_path, timeout=120)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0
    assert err.count("charrnn: error") == 1, err[-3000:]
    assert "--lr must be in (0, 10], not nan" in err
    assert not (tmp_path / "r").exists()
