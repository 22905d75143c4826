"""`charrnn runs [DIR]`: the runs listed newest first with their steps, best val loss and state (finished,
interrupted, running from the lock, unreadable), `--json`, `--best`, and an empty directory. Through the real CLI;
the finished/interrupted rule also in-process on checkpoint-shaped dicts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY, assert_one_line_error, cli_env, hang_guard, make_corpus, run_cli

from charrnn.store.checkpoint import RunLock
from charrnn.store.runs import planned_steps, run_state

FIELDS = {"name", "path", "state", "pid", "corpus", "cell", "num_layers", "hidden_size", "step", "planned_steps",
          "epoch", "elapsed", "best_val_loss", "best_val_bpc", "best", "saved_at", "size_bytes", "corpus_sha256", "options"}


def runs(*args, **env) -> subprocess.CompletedProcess:
    return run_cli("runs", *args, env=cli_env(**env))


def runs_json(*args, **env) -> list:
    proc = runs(*args, "--json", **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def table_rows(proc: subprocess.CompletedProcess) -> dict:
    """The table's rows by run name (the first column), in order."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["run", "corpus", "model"], lines
    return {line.split()[0]: line.split() for line in lines[1:] if line.strip()}


def copy_run(source: Path, target: Path, age: float = 0.0) -> Path:
    shutil.copytree(source, target)
    return set_age(target, age) if age else target


def set_age(run: Path, age: float) -> Path:
    """Make the run `age` seconds old (its latest.pt's modification time: what newest-first sorts by)."""
    then = time.time() - age
    os.utime(run / "latest.pt", (then, then))
    return run


def test_two_runs_newest_first_with_steps_and_best_val_json_and_best(tmp_path, tiny_run):
    home = tmp_path / "home"
    base = home / "checkpoints"
    older = copy_run(tiny_run, base / "older-run", age=3600)  # 40 steps, through the library
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=8000)
    newer = base / "newer-run"
    run_cli("train", corpus, *TINY, "--cell", "gru", "--max-steps", "10", "--eval-every", "5", "--run-dir", newer,
            "--quiet", check=0)

    listed = runs_json(CHARRNN_HOME=home)  # no DIR: $CHARRNN_HOME/checkpoints
    assert [r["name"] for r in listed] == ["newer-run", "older-run"]
    assert all(set(r) == FIELDS for r in listed), listed
    new, old = listed
    assert (new["step"], old["step"]) == (10, 40)
    assert (new["cell"], new["num_layers"], new["hidden_size"]) == ("gru", 2, 32)
    assert new["state"] == old["state"] == "finished" and new["pid"] is None
    assert new["planned_steps"] == 10 and new["path"] == str(newer.resolve())
    assert new["corpus"] == str(corpus) and new["size_bytes"] > 0 and new["elapsed"] > 0
    for r in listed:
        assert abs(r["best_val_bpc"] - r["best_val_loss"] / 0.6931471805599453) < 1e-9
        assert r["best"] == str(Path(r["path"]) / "best.pt")

    rows = table_rows(runs(CHARRNN_HOME=home))
    assert list(rows) == ["newer-run", "older-run"]
    assert rows["newer-run"][1:5] == ["corpus.txt", "gru", "2x32", "10"]
    assert rows["older-run"][4] == "40"
    for r in listed:
        row = rows[r["name"]]
        assert f"{r['best_val_loss']:.4f}" in row and f"{r['best_val_bpc']:.4f}" in row and "finished" in row

    assert new["best_val_loss"] != old["best_val_loss"]
    lower = min(listed, key=lambda r: r["best_val_loss"])
    proc = runs("--best", CHARRNN_HOME=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == lower["best"] + "\n" and os.path.isfile(lower["best"])
    assert runs_json(base, "--best") == lower  # with --json: the best run's object
    assert runs_json(base) == listed  # DIR given


def test_a_held_lock_shows_running_and_a_signal_stop_shows_interrupted(tmp_path, tiny_run):
    base = tmp_path / "checkpoints"
    run = copy_run(tiny_run, base / "locked")
    with RunLock(str(run)):  # the flock and PID that `charrnn train` takes
        (entry,) = runs_json(base)
        assert (entry["state"], entry["pid"], entry["step"]) == ("running", os.getpid(), 40)
        assert "running" in table_rows(runs(base))["locked"]
    (entry,) = runs_json(base)
    assert (entry["state"], entry["pid"]) == ("finished", None)  # released (and a dead holder's lock is no lock)

    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=8000)
    real = base / "stopped"
    faults = Path(__file__).resolve().parent.parent / "faults.py"
    proc = subprocess.Popen([sys.executable, str(faults), json.dumps({"pause_at": 12}), "train", str(corpus), *TINY,
                             "--max-steps", "40", "--eval-every", "6", "--run-dir", str(real), "--quiet"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + hang_guard(120)
        while not (real / "paused").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.02)
        entry = {r["name"]: r for r in runs_json(base)}["stopped"]
        # the trainer pauses after step 12, before that step's save: latest.pt holds step 6
        assert (entry["state"], entry["pid"], entry["step"]) == ("running", proc.pid, 6)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=hang_guard(120))
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listed = runs_json(base)
    assert [r["name"] for r in listed] == ["stopped", "locked"]
    assert (listed[0]["state"], listed[0]["step"], listed[0]["planned_steps"]) == ("interrupted", 12, 40)
    row = table_rows(runs(base))["stopped"]
    assert "12/40" in row and "interrupted" in row


def test_a_corrupt_checkpoint_is_unreadable_and_the_rest_still_listed(tmp_path, tiny_run):
    base = tmp_path / "checkpoints"
    good = copy_run(tiny_run, base / "good", age=3600)
    garbage = copy_run(tiny_run, base / "garbage")
    (garbage / "latest.pt").write_bytes(b"not a checkpoint at all")
    cut = copy_run(tiny_run, base / "cut")
    data = (cut / "latest.pt").read_bytes()
    (cut / "latest.pt").write_bytes(data[: len(data) // 2])  # a torch zip cut short
    set_age(garbage, 60)
    set_age(cut, 120)
    (base / "not-a-run").mkdir()
    (base / "not-a-run" / "metrics.jsonl").write_text("")
    (base / "not-a-run" / "lock").write_text("12345\n")  # a failed start's leftovers: no latest.pt, lock not held

    listed = runs_json(base)
    assert [(r["name"], r["state"]) for r in listed] == [("garbage", "unreadable"), ("cut", "unreadable"),
                                                          ("good", "finished")]
    assert listed[0]["step"] is None and listed[0]["best_val_loss"] is None
    rows = table_rows(runs(base))
    assert list(rows) == ["garbage", "cut", "good"] and "unreadable" in rows["garbage"]
    proc = runs(base, "--best")
    assert proc.stdout.decode() == str(good.resolve() / "best.pt") + "\n"


def test_no_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stray").mkdir()  # a directory that is not a run
    proc = runs(empty)
    assert proc.returncode == 0 and proc.stdout == b""
    assert proc.stderr.decode().strip().splitlines() == [f"charrnn: no runs under {empty}"]
    assert runs_json(empty) == []
    assert_one_line_error(runs(empty, "--best"), 66, "no run")
    assert runs_json(CHARRNN_HOME=tmp_path / "fresh") == []  # no checkpoints/ yet: no runs
    assert_one_line_error(runs(tmp_path / "missing"), 66, "no such directory")


def _meta(step, train=None, epoch=0, batch=None, elapsed=1.0, horizon=None, chars=10_000):
    train = {"val_frac": 0.1, "test_frac": 0.1, "batch_size": 4, "seq_len": 16, "max_steps": None, "epochs": None,
             "time_budget": None, "schedule_steps": None, **(train or {})}
    progress = {"step": step, "epoch": epoch, "batch": step if batch is None else batch, "elapsed": elapsed,
                "schedule_steps": horizon}
    return {"train_config": train, "progress": progress, "corpus": {"chars": chars}}


def test_finished_or_interrupted_is_the_stop_rule_on_latest_pts_counters():
    # 10,000 chars, 80% train: (8000 - 1) // 4 // 16 = 124 batches per epoch
    assert run_state(_meta(40, {"max_steps": 40}, horizon=40)) == "finished"
    assert run_state(_meta(39, {"max_steps": 40}, horizon=40)) == "interrupted"
    assert run_state(_meta(62, {"epochs": 0.5}, horizon=62)) == "finished"
    # --schedule-steps hides the limit from the horizon: from the corpus size, or the counters after an epoch
    fixed = {"epochs": 0.5, "schedule_steps": 1000}
    assert planned_steps(_meta(10, fixed, horizon=1000)) == 62
    assert run_state(_meta(62, fixed, horizon=1000)) == "finished"
    assert run_state(_meta(61, fixed, horizon=1000)) == "interrupted"
    two = {"epochs": 2.0, "schedule_steps": 1000}
    assert planned_steps(_meta(130, two, epoch=1, batch=6, chars=1)) == 248  # 124 per epoch from the counters
    assert planned_steps(_meta(5, {"schedule_steps": 1000}, horizon=1000)) == 1240  # no stop given: 10 epochs
    budget = {"time_budget": 60.0}
    assert planned_steps(_meta(5, budget)) is None
    assert run_state(_meta(500, budget, elapsed=60.2)) == "finished"
    assert run_state(_meta(500, budget, elapsed=30.0)) == "interrupted"
    assert run_state(_meta(9, {"max_steps": 10, "time_budget": 60.0}, horizon=10, elapsed=61.0)) == "finished"
