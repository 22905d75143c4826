"""Faults while training: SIGKILL at random moments, SIGINT/SIGTERM, exact resume, disk full, locks, NaN.

Every test runs the real CLI in a subprocess (tiny model, one torch thread: the machine is shared and a tiny model
only gets slower with more threads). Checkpoint-writer faults go through charrnn.store.fileio.write_hook (see
tests/faults.py): `slow_write` (a slow checkpoint writer, so a kill can land mid-save) and `enospc_after` (the writer
fails with ENOSPC after N bytes); training faults through charrnn.training.trainer.hooks: `pause_at` (the trainer waits after
a given step until it is signalled, so a signal lands at a known step whatever the load), `nan_at` (the loss of a
step is multiplied by NaN or Inf, so its gradients really are non-finite) and `step_delay`. They are installed in a
real process by `python tests/faults.py HOOKS ARGS` or the fork server's "hooks" field.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charrnn.config import TrainConfig

import faults
from conftest import TINY, assert_one_line_error, cli_env, hang_guard, make_corpus, run_cli

# dropout on, so exact resume also has to restore the RNG that dropout draws from; log every step, so every loss
# is compared
EXACT = [*TINY, "--val-frac", "0.1", "--test-frac", "0.1", "--dropout", "0.1", "--eval-every", "10",
         "--log-every", "1", "--quiet"]
TIMING_FIELDS = ("elapsed", "chars_per_sec")


def env(**extra) -> dict:
    return cli_env(OMP_NUM_THREADS=1, **extra)


def popen(*args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, hooks=None, **extra) -> subprocess.Popen:
    """The CLI in a subprocess; `hooks` installs faults from tests/faults.py in it first."""
    entry = [str(Path(faults.__file__)), json.dumps(hooks)] if hooks else ["-m", "charrnn"]
    return subprocess.Popen([sys.executable, *entry, *map(str, args)], env=env(**extra), stdout=stdout,
                            stderr=stderr, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A child started from a shell's background job inherits SIGINT ignored (and Python then leaves it so): give
    it the default, as a command typed at a terminal has, whatever launched pytest."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_with_hooks(hooks: dict, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = popen(*args, hooks=hooks)
    out, err = proc.communicate(timeout=hang_guard(timeout))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + hang_guard(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def metric_rows(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items() if k not in TIMING_FIELDS})
    return rows


def last_logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def temps(run: Path) -> list[str]:
    return glob.glob(str(run / ".tmp-*"))


def load(path):
    from charrnn.store.checkpoint import load_checkpoint

    return load_checkpoint(str(path))


def assert_same_training_state(a: Path, b: Path) -> None:
    """Bit-identical weights, optimizer state, loss log and seeded samples."""
    import torch

    ca, cb = load(a / "latest.pt"), load(b / "latest.pt")
    assert ca["progress"]["step"] == cb["progress"]["step"]
    assert ca["model"].keys() == cb["model"].keys()
    for name in ca["model"]:
        assert torch.equal(ca["model"][name], cb["model"][name]), name
        if ca["train_weights"] is not None or cb["train_weights"] is not None:  # --ema: "model" is the average
            assert torch.equal(ca["train_weights"][name], cb["train_weights"][name]), name
    assert ca["progress"]["ema_updates"] == cb["progress"]["ema_updates"]
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for key in oa["state"]:
        for field in oa["state"][key]:
            assert torch.equal(oa["state"][key][field], ob["state"][key][field]), (key, field)
    assert torch.equal(ca["hidden"], cb["hidden"])
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    assert any("val_loss" in r for r in rows_a)
    assert rows_a == rows_b  # every loss, lr, grad norm and val loss, in order
    samples = [run_cli("sample", run, "--seed", "7", "-n", "300", env=env(), check=0).stdout for run in (a, b)]
    assert samples[0] == samples[1] and len(samples[0]) >= 300


@pytest.fixture(scope="module")
def exact_corpus(tmp_path_factory) -> Path:
    # 1200 characters: 14 batches an epoch with B=4, T=16, so 40 steps cross two epoch boundaries
    return make_corpus(tmp_path_factory.mktemp("exact") / "corpus.txt", n_chars=1200)


@pytest.fixture(scope="module")
def reference_run(exact_corpus) -> Path:
    """40 steps without interruption."""
    run = exact_corpus.parent / "reference"
    run_cli("train", exact_corpus, *EXACT, "--max-steps", "40", "--run-dir", run, env=env(), check=0)
    return run


# ----------------------------------------------------------------------------------------------------------------
# SIGINT / SIGTERM during training, and exact resume


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_says_where_and_resume_is_exact(reference_run, exact_corpus, tmp_path, sig, code, name):
    run = tmp_path / "run"
    proc = popen("train", exact_corpus, *EXACT, "--max-steps", "40", "--run-dir", run, hooks={"pause_at": 12})
    wait_for(lambda: (run / "paused").exists(), what="step 12")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=hang_guard(60))
    proc_result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = assert_one_line_error(proc_result, code, name, "saved", str(run / "latest.pt"), "--resume")
    stopped = int(line.split("stopped after step ")[1].split(";")[0])
    assert stopped == 12  # the step it was in when the signal came
    assert load(run / "latest.pt")["progress"]["step"] == stopped  # the step it finished is the one saved
    run_cli("train", "--resume", run, "--quiet", env=env(), check=0)
    assert_same_training_state(reference_run, run)


def test_stopped_by_max_steps_then_extended_is_exact(reference_run, exact_corpus, tmp_path):
    """A run stopped at 20 steps and continued to 40 equals 40 uninterrupted steps; --schedule-steps keeps the
    learning-rate schedule's length fixed, and the extension says so when it is not fixed."""
    run = tmp_path / "run"
    run_cli("train", exact_corpus, *EXACT, "--max-steps", "20", "--schedule-steps", "40", "--run-dir", run,
            env=env(), check=0)
    assert load(run / "latest.pt")["progress"]["step"] == 20
    run_cli("train", "--resume", run, "--max-steps", "40", "--quiet", env=env(), check=0)
    assert_same_training_state(reference_run, run)


def test_second_sigint_during_save_does_not_corrupt_it(exact_corpus, tmp_path):
    run = tmp_path / "run"
    # a save that takes about 1.6 s, and no evaluation (so the only save is the one the signal asks for)
    proc = popen("train", exact_corpus, *TINY, "--val-frac", "0", "--eval-every", "100000", "--log-every", "1",
                 "--max-steps", "100000", "--run-dir", run, "--quiet", hooks={"slow_write": 0.2, "pause_at": 3})
    wait_for(lambda: (run / "paused").exists(), what="step 3")
    proc.send_signal(signal.SIGINT)
    first = wait_for(lambda: [(t, os.path.getsize(t)) for t in temps(run) if os.path.getsize(t)],
                     what="the save to start")
    proc.send_signal(signal.SIGINT)  # mid-save
    wait_for(lambda: any(os.path.exists(t) and os.path.getsize(t) > size for t, size in first) or not temps(run),
             what="the save to write on")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=hang_guard(60))
    line = assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 130, "SIGINT")
    stopped = int(line.split("stopped after step ")[1].split(";")[0])
    assert load(run / "latest.pt")["progress"]["step"] == stopped
    assert temps(run) == []


# ----------------------------------------------------------------------------------------------------------------
# SIGKILL at random moments: the latest checkpoint always loads, and the run resumes


class ForkServer:
    """Starts the real CLI entry point in forked children of one process that imported torch once (see
    tests/forkserver.py): 50 trainers in seconds instead of minutes."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent.parent / "forkserver.py")], env=env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list, stderr: Path, hooks: dict | None = None, **extra) -> int:
        return self._ask({"argv": [str(a) for a in argv], "env": {k: str(v) for k, v in extra.items()},
                          "stderr": str(stderr), "hooks": hooks or {}})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=hang_guard(30))


def test_sigkill_at_random_moments_never_loses_the_checkpoint(tmp_path):
    rng = random.Random(1234)
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    # --schedule-steps fixes the learning-rate schedule, so the killed-and-resumed run can be compared with an
    # uninterrupted one at the end
    common = [*TINY, "--val-frac", "0.1", "--test-frac", "0", "--dropout", "0.1", "--eval-every", "7",
              "--log-every", "1", "--save-every", "3", "--keep-last", "2", "--schedule-steps", "100000"]
    # the first run ends on an evaluation step, as the uninterrupted reference evaluates there too
    run_cli("train", corpus, *common, "--max-steps", "7", "--run-dir", run, "--quiet", env=env(), check=0)
    step, trials, advanced = 7, 48, 0
    err_path, marker = tmp_path / "trial.stderr", tmp_path / "stalled"
    server = ForkServer()
    try:
        for trial in range(trials):
            had_temps = bool(temps(run))
            err_path.write_bytes(b"")
            # three kinds of kill, in turn, so each is tried whatever the machine's load: inside a save (a checkpoint
            # write stops part-way and waits: a random one of the next few files, after a random piece of it);
            # between saves (the trainer waits after a random step that saves nothing); at a random moment
            # (writes slowed: 8 chunks, 3 ms apart, so a kill lands in a save a good part of the time)
            kind = ("in a save", "between saves", "at random")[trial % 3]
            if kind == "in a save":
                marker.unlink(missing_ok=True)
                hooks = {"stall_write": {"write": rng.randint(1, 4), "chunk": rng.randint(0, 7), "marker": str(marker)}}
            elif kind == "between saves":
                (run / "paused").unlink(missing_ok=True)
                pause = rng.choice([s for s in range(step + 1, step + 9) if s % 3 and s % 7])  # no save, no eval
                hooks = {"pause_at": pause}
            else:
                hooks = {"slow_write": 0.003}
            pid = server.start(["train", "--resume", run, "--max-steps", "100000"], err_path, hooks=hooks)
            wait_for(lambda: b"resuming" in err_path.read_bytes(), what=f"trial {trial} to resume")
            stderr = err_path.read_bytes()
            assert f"at step {step}".encode() in stderr, (step, stderr)  # it resumed from the last good save
            if had_temps:  # the killed save's temp file is cleaned up at the next start, and the user told
                assert b"unfinished checkpoint file" in stderr, stderr
            if kind == "in a save":
                wait_for(marker.exists, what=f"trial {trial} to stop inside a checkpoint write")
            elif kind == "between saves":
                wait_for((run / "paused").exists, what=f"trial {trial} to wait after step {pause}")
            else:
                # training is under way once a step is logged (the first step also loads numba's compiled kernels)
                wait_for(lambda: b"\nstep " in err_path.read_bytes().split(b"resuming", 1)[1],
                         what=f"trial {trial} to step")
                time.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            assert server.wait(pid) == -signal.SIGKILL
            if kind != "at random":  # the kill landed where it was meant to: a temp file is left exactly when in a save
                assert bool(temps(run)) == (kind == "in a save"), (trial, kind, temps(run))
            # no half-written file under a final name: every checkpoint there loads and verifies
            finals = sorted(glob.glob(str(run / "*.pt")))
            assert str(run / "latest.pt") in finals
            for path in finals:
                load(path)
            new_step = load(run / "latest.pt")["progress"]["step"]
            assert new_step >= step
            advanced += new_step > step
            step = new_step
    finally:
        server.close()
    assert advanced >= 10, advanced
    (run / "paused").unlink(missing_ok=True)
    # the last resume runs to completion and ends exactly where an uninterrupted run does
    final = step + 4
    run_cli("train", "--resume", run, "--max-steps", final, "--quiet", env=env(), check=0)
    assert temps(run) == []
    reference = tmp_path / "reference"
    run_cli("train", corpus, *common, "--max-steps", final, "--run-dir", reference, "--quiet", env=env(), check=0)
    assert_same_training_state(reference, run)


# ----------------------------------------------------------------------------------------------------------------
# locks


def test_second_trainer_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    first = popen("train", corpus, *TINY, "--max-steps", "100000", "--log-every", "1", "--save-every", "2",
                  "--run-dir", run, "--quiet", hooks={"pause_at": 4})  # it waits there, holding the lock
    try:
        wait_for(lambda: (run / "paused").exists(), what="the first trainer's first save")
        for args in (["--resume", run], [corpus, *TINY, "--run-dir", run]):
            second = run_cli("train", *args, "--quiet", env=env())
            assert_one_line_error(second, 73, "in use", f"PID {first.pid}")
        assert first.poll() is None  # the holder is undisturbed
    finally:
        first.kill()  # SIGKILL: it cannot release anything; the kernel drops its flock
        first.wait()
    assert (run / "lock").read_text().strip() == str(first.pid)  # the dead process's PID is still written there
    proc = run_cli("train", "--resume", run, "--max-steps", last_logged_step(run) + 2, "--quiet", env=env())
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# disk full, unwritable run directory


def test_disk_full_exits_74_keeps_the_previous_checkpoint_and_removes_the_temp(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--max-steps", "5", "--schedule-steps", "10", "--keep-last", "3",
            "--run-dir", run, "--quiet", env=env(), check=0)
    before = {p: Path(p).read_bytes() for p in glob.glob(str(run / "*.pt"))}
    assert len(before) == 3  # latest, best, step-00000005
    proc = run_with_hooks({"enospc_after": 5000}, "train", "--resume", run, "--max-steps", "10", "--quiet")
    assert_one_line_error(proc, 74, "disk full", str(run))
    after = {p: Path(p).read_bytes() for p in glob.glob(str(run / "*.pt"))}
    assert after == before  # no new step checkpoint, latest and best untouched
    assert temps(run) == []
    assert load(run / "latest.pt")["progress"]["step"] == 5


def test_checkpoint_save_failures_leave_no_temp_and_keep_the_old_file(tmp_path, monkeypatch):
    from charrnn.store import fileio
    from charrnn.store.checkpoint import save_checkpoint
    from charrnn.errors import WriteError

    (tmp_path / "latest.pt").write_bytes(b"old")
    paths = [str(tmp_path / "latest.pt"), str(tmp_path / "best.pt")]
    monkeypatch.setattr(fileio, "write_hook", faults.disk_full_after(10))
    with pytest.raises(WriteError, match="disk full"):
        save_checkpoint({"step": 1}, paths)
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]
    monkeypatch.setattr(fileio, "write_hook", None)

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError, match="Input/output error"):
        save_checkpoint({"step": 1}, paths)
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]
    assert (tmp_path / "latest.pt").read_bytes() == b"old"


def test_unwritable_run_directory_fails_before_training_with_73(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    # Tests run as root, which ignores file modes, so chmod cannot make a directory unwritable here: a run
    # directory below a regular file can never be created, whoever asks.
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    proc = run_cli("train", corpus, *TINY, "--max-steps", "5", "--run-dir", blocker / "run", env=env())
    assert_one_line_error(proc, 73, "cannot create run directory", str(blocker / "run"))
    assert blocker.read_text() == "not a directory"


# ----------------------------------------------------------------------------------------------------------------
# non-finite loss


def test_nan_stops_with_the_step_and_never_replaces_latest_or_best(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--max-steps", "10", "--schedule-steps", "20", "--eval-every", "5",
            "--run-dir", run, "--quiet", env=env(), check=0)
    before = {name: (run / name).read_bytes() for name in ("latest.pt", "best.pt")}
    # step 13 poisons the weights if it is applied; the save at step 15 would then write them
    proc = run_with_hooks({"nan_at": {"steps": [13]}}, "train", "--resume", run, "--max-steps", "20", "--quiet")
    assert_one_line_error(proc, 1, "non-finite loss at step 13", str(run / "latest.pt"))
    assert {name: (run / name).read_bytes() for name in before} == before


def test_inf_with_skip_policy_skips_the_step_and_finishes(tmp_path):
    import torch

    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    proc = run_with_hooks({"nan_at": {"steps": [4, 9], "value": "inf"}}, "train", corpus, *TINY, "--max-steps",
                          "12", "--eval-every", "5", "--log-every", "1", "--on-nonfinite", "skip", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "non-finite loss at step 4: skipped" in err and "non-finite loss at step 9: skipped" in err
    ckpt = load(run / "latest.pt")
    assert ckpt["progress"]["step"] == 12
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    skipped = [r["step"] for r in metric_rows(run) if r.get("skipped")]
    assert skipped == [4, 9]
    losses = [r["loss"] for r in metric_rows(run) if "loss" in r]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)


def test_skip_policy_still_stops_a_diverged_run(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    proc = run_with_hooks({"nan_at": {"steps": list(range(1, 30))}}, "train", corpus, *TINY, "--max-steps", "25",
                          "--on-nonfinite", "skip", "--run-dir", tmp_path / "run", "--quiet")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.count("skipped the step") == 0  # --quiet: errors only
    assert err.splitlines()[-1] == (
        "charrnn: error: non-finite loss at step 11 (11 steps in a row); no checkpoint was saved; removed the run "
        f"directory {tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()  # nothing was saved: the run leaves nothing behind


# ----------------------------------------------------------------------------------------------------------------
# retention and save cadence


def test_keep_last_prunes_after_saving_and_never_the_resumed_from_file(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--max-steps", "20", "--eval-every", "1000", "--save-every", "4",
            "--keep-last", "2", "--run-dir", run, "--quiet", env=env(), check=0)
    names = lambda: sorted(p.name for p in run.glob("step-*.pt"))
    assert names() == ["step-00000016.pt", "step-00000020.pt"]
    for name in names():
        assert load(run / name)["progress"]["step"] == int(name[5:13])
    run_cli("train", "--resume", run / "step-00000016.pt", "--max-steps", "28", "--quiet", env=env(), check=0)
    # saves at 20, 24, 28 with --keep-last 2 would prune step 16, but the run resumed from it
    assert names() == ["step-00000016.pt", "step-00000024.pt", "step-00000028.pt"]


def test_save_every_by_time(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    # 60 steps of at least 25 ms: 1.5 s or more, so a save every 0.3 s gives several step checkpoints
    proc = run_with_hooks({"step_delay": 0.025}, "train", corpus, *TINY, "--max-steps", "60", "--eval-every", "1000",
                          "--save-every", "0.3s", "--keep-last", "100", "--run-dir", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    steps = sorted(int(p.name[5:13]) for p in run.glob("step-*.pt"))
    assert steps[-1] == 60
    assert 3 <= len(steps) < 40, steps  # by time, not at every step


def test_save_every_reads_steps_or_time_and_refuses_anything_else():
    from charrnn import TrainConfig
    from charrnn.errors import UsageError

    assert TrainConfig(save_every="500").save_interval() == (500, None)
    assert TrainConfig(save_every=500).save_interval() == (500, None)
    assert TrainConfig(save_every="10m").save_interval() == (None, 600.0)
    assert TrainConfig().save_interval() == (None, None)
    for bad in ("soon", "0", "-5", "5 steps", "0s"):
        with pytest.raises(UsageError, match="--save-every"):
            TrainConfig(save_every=bad).validate()


# ----------------------------------------------------------------------------------------------------------------
# resume refusals


def test_resume_refuses_a_different_architecture_or_corpus_naming_what_differs(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=3000)
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--max-steps", "3", "--run-dir", run, "--quiet", env=env(), check=0)
    proc = run_cli("train", "--resume", run, "--hidden-size", "48", env=env())
    assert_one_line_error(proc, 2, "different architecture", "--hidden-size 48 (checkpoint has 32)")
    proc = run_cli("train", "--resume", run, "--lr", "0.01", env=env())
    assert_one_line_error(proc, 2, f"--lr 0.01 (checkpoint has {TrainConfig().lr})", "--allow-lr-change")
    make_corpus(corpus, n_chars=3000, seed=1)  # same size, different text
    proc = run_cli("train", "--resume", run, env=env())
    assert_one_line_error(proc, 65, "corpus", "differs", str(corpus))
    make_corpus(corpus, n_chars=3000, seed=0)  # the original text again: accepted, with a changed lr on request
    proc = run_cli("train", "--resume", run, "--max-steps", "5", "--lr", "0.01", "--allow-lr-change",
                   env=env())
    assert proc.returncode == 0, proc.stderr
    # a longer step limit stretches the schedule: the user is told the run now differs from an uninterrupted one
    assert b"schedule now decays over 5 steps instead of 3" in proc.stderr
    assert load(run / "latest.pt")["train_config"]["lr"] == 0.01


# ----------------------------------------------------------------------------------------------------------------
# sample: SIGINT and a closed pipe


def test_sample_sigint_exits_130_without_traceback(tiny_run):
    proc = popen("sample", tiny_run, "-n", "100000000")
    assert len(proc.stdout.read(200)) == 200  # generating
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=hang_guard(60))
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert len(err.decode().strip().splitlines()) <= 1, err


def test_sample_into_a_closed_pipe_exits_0_quietly(tiny_run):
    # `charrnn sample | head -c 10`: read 10 bytes, then close the pipe as head does
    proc = popen("sample", tiny_run, "-n", "100000000")
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=hang_guard(60)) == 0, err
    assert err == b"", err
    shell = subprocess.run(
        f"'{sys.executable}' -m charrnn sample '{tiny_run}' -n 100000 | head -c 10; echo \" ${{PIPESTATUS[0]}}\"",
        shell=True, executable="/bin/bash", env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=hang_guard(60))
    assert shell.stdout.endswith(b" 0\n") and len(shell.stdout) == 10 + 3, shell.stdout
    assert shell.stderr == b"", shell.stderr
