"""What a newcomer trips on (issue 30) and runs started together (issue 25): `eval FILE` with the newest run,
`--temperature 0`, runs told apart (columns, `info`, `--name`), start-up that checks first and handles signals,
click's usage errors in charrnn's form, the lock file removed, the progress line, and four runs started at once.
Through the real CLI in scratch directories; no sleeps: each test waits for what the run reports (a file, a line)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, assert_one_line_error, cli_env, make_corpus, run_cli

from charrnn.store.checkpoint import RunLock

HANG_GUARD = 300  # seconds: only a hang reaches it


def home_env(home: Path, **extra) -> dict:
    return cli_env(CHARRNN_HOME=home, **extra)


def copy_run(run: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("latest.pt", "best.pt"):
        shutil.copy2(run / name, dest / name)
    return dest


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = HANG_GUARD) -> None:
    """Poll until predicate() holds (an event the process causes), failing if the process ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def start_cli(*args, cwd, env, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


# ----------------------------------------------------------------------------------------------------------------
# 1. eval FILE scores FILE with the newest run; a text file first with a second argument names the order


def test_eval_with_one_text_file_scores_it_with_the_newest_run(tiny_run, tmp_path):
    home = tmp_path / "home"
    copy_run(tiny_run, home / "checkpoints" / "corpus-20260101-000000")
    held_out = make_corpus(tmp_path / "held_out.txt", n_chars=800, seed=5)
    alone = run_cli("eval", held_out, "--json", cwd=tmp_path, env=home_env(home), check=0)
    given = run_cli("eval", tiny_run / "latest.pt", held_out, "--json", cwd=tmp_path, env=home_env(home), check=0)
    scored, expected = json.loads(alone.stdout), json.loads(given.stdout)
    assert scored["chars"] == expected["chars"] > 0
    assert scored["nats_per_char"] == pytest.approx(expected["nats_per_char"], rel=1e-6)
    wrong = run_cli("eval", held_out, tiny_run / "latest.pt", cwd=tmp_path, env=home_env(home))
    assert_one_line_error(wrong, 2, "held_out.txt is text, not a checkpoint", "charrnn eval CHECKPOINT FILE")


# ----------------------------------------------------------------------------------------------------------------
# 2. --temperature 0 is greedy: the most likely character, whatever the seed


def test_pick_at_temperature_zero_takes_the_most_likely_character():
    import numpy as np

    from charrnn.inference.sampling import pick

    logits = np.array([[0.1, 2.0, 1.9, -1.0], [5.0, 5.0, 0.0, 1.0]])
    for uniforms in (np.array([1e-9, 1e-9]), np.array([1.0, 1.0]), np.array([0.5, 0.7])):
        assert pick(logits, uniforms, 0.0, None, None).tolist() == [1, 0]  # equals: the first
        assert pick(logits, uniforms, 0, 2, 0.5).tolist() == [1, 0]


def test_temperature_zero_is_the_same_text_whatever_the_seed(tiny_run):
    import charrnn

    one = charrnn.sample(str(tiny_run), length=60, temperature=0, seed=1, prime="The")[0]
    two = charrnn.sample(str(tiny_run), length=60, temperature=0, seed=2, prime="The")[0]
    assert one == two and len(one) == 63
    cli = [run_cli("sample", tiny_run, "--temperature", "0", "-n", "60", "--prime", "The", "--seed", seed, check=0)
           for seed in ("1", "2")]
    assert cli[0].stdout == cli[1].stdout == (one + ("" if one.endswith("\n") else "\n")).encode()


def test_a_negative_temperature_says_the_range_in_words(tiny_run):
    line = assert_one_line_error(run_cli("sample", tiny_run, "--temperature", "-1"), 2, "--temperature")
    assert line == ("charrnn: error: --temperature must be 0 (always the most likely character) or from 0.001 to 10, "
                    "not -1.0")


# ----------------------------------------------------------------------------------------------------------------
# 3. four runs started at once in one shell: four run directories, no lock left; they are told apart


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four `charrnn train` started together from one shell (`&`), each with its own --lr, one with --name."""
    base = tmp_path_factory.mktemp("sweep")
    make_corpus(base / "c.txt", n_chars=4000)
    make_corpus(base / "other.txt", n_chars=4000, seed=9)
    python, tiny = sys.executable, " ".join(TINY)
    script = "pids=''\n"
    for i, lr in enumerate(("0.001", "0.002", "0.003", "0.004")):
        name = " --name lr-0.004" if i == 3 else ""
        script += (f"{python} -m charrnn train c.txt {tiny} --max-steps 4 --eval-every 2 --lr {lr}{name} -q "
                   f"2> err{i}.txt & pids=\"$pids $!\"\n")
    script += "codes=''\nfor p in $pids; do wait $p; codes=\"$codes $?\"; done\necho $codes\n"
    proc = subprocess.run(["bash", "-c", script], cwd=base, env=home_env(base), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=4 * HANG_GUARD)
    return base, proc


def test_four_runs_started_at_once_all_finish_in_four_run_directories_without_a_lock_left(sweep):
    base, proc = sweep
    errors = [(base / f"err{i}.txt").read_text() for i in range(4)]
    assert proc.stdout.decode().split() == ["0", "0", "0", "0"], errors
    runs = sorted(p for p in (base / "checkpoints").iterdir())
    assert len(runs) == 4, runs
    assert all((run / "latest.pt").is_file() for run in runs)
    assert not any((run / "lock").exists() for run in runs)  # a run that ends removes its lock file
    assert sum(run.name.startswith("lr-0.004-") for run in runs) == 1  # --name sets the prefix
    assert sum(run.name.startswith("c-") for run in runs) == 3


def test_runs_shows_the_options_the_listed_runs_differ_in(sweep):
    base, _ = sweep
    listed = json.loads(run_cli("runs", "--json", env=home_env(base), check=0).stdout)
    assert sorted(r["options"]["lr"] for r in listed) == [0.001, 0.002, 0.003, 0.004]
    table = run_cli("runs", env=home_env(base), check=0).stdout.decode()
    header = table.splitlines()[0].split()
    assert "lr" in header and "batch" not in header  # they differ in lr, not in batch size
    for lr in ("0.001", "0.002", "0.003", "0.004"):
        assert lr in table
    info = run_cli("info", env=home_env(base), check=0).stdout.decode()
    assert any(line.startswith("training options:") and "--lr 0.00" in line and "--batch-size 4" in line
               for line in info.splitlines()), info


def test_runs_best_compares_only_runs_on_one_corpus(sweep, tmp_path):
    base, _ = sweep
    listed = json.loads(run_cli("runs", "--json", env=home_env(base), check=0).stdout)
    best = min(listed, key=lambda r: r["best_val_loss"])
    assert run_cli("runs", "--best", env=home_env(base), check=0).stdout.decode().strip() == best["best"]
    assert run_cli("runs", "--best", "--corpus", "c.txt", env=home_env(base), check=0).stdout.decode().strip() == \
        best["best"]
    assert_one_line_error(run_cli("runs", "--best", "--corpus", "other.txt", env=home_env(base)), 66,
                          "no run trained on other.txt")


def test_best_run_takes_the_newest_runs_corpus_unless_told():
    from charrnn.store.runs import best_run

    def run(name, sha, loss, source):
        return {"name": name, "corpus": source, "corpus_sha256": sha, "best_val_loss": loss, "best": f"/{name}/best.pt"}

    runs = [run("newest", "aa", 1.5, "/d/a.txt"), run("lower-elsewhere", "bb", 0.5, "/d/b.txt"),
            run("older", "aa", 1.2, "/d/a.txt")]
    assert best_run(runs)["name"] == "older"
    assert best_run(runs, "b.txt")["name"] == "lower-elsewhere"
    assert best_run(runs, "bb")["name"] == "lower-elsewhere"
    assert best_run(runs, "c.txt") is None


# ----------------------------------------------------------------------------------------------------------------
# 4. runs probes a lock without taking it


def test_runs_probes_a_lock_without_taking_it(tmp_path, monkeypatch):
    import charrnn.store.runs as runs_mod

    if not os.path.exists("/proc/locks"):
        pytest.skip("no /proc/locks here: the probe falls back to a shared flock")
    run = tmp_path / "run"
    run.mkdir()

    def no_flock(*args):
        raise AssertionError("the probe took a lock")

    with RunLock(str(run)):
        monkeypatch.setattr(runs_mod.fcntl, "flock", no_flock)
        assert runs_mod.lock_holder(str(run)) == os.getpid()
        monkeypatch.undo()
    assert runs_mod.lock_holder(str(run)) is None
    assert not (run / "lock").exists()  # released: the file goes with it


# ----------------------------------------------------------------------------------------------------------------
# 5. start-up checks first and handles signals


def test_a_held_run_directory_is_refused_before_the_corpus_is_read(tmp_path):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)  # no writer ever: reading it would wait forever
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(str(run)):
        proc = run_cli("train", fifo, *TINY, "--run-dir", run, cwd=tmp_path, env=home_env(tmp_path),
                       timeout=HANG_GUARD)
    assert_one_line_error(proc, 73, f"run directory {run} is in use by another charrnn train (PID {os.getpid()})")


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_during_start_up_says_nothing_was_trained_and_leaves_nothing(tmp_path, sig, code, name):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)  # start-up waits here for a writer
    run = tmp_path / "run"
    proc = start_cli("train", fifo, *TINY, "--run-dir", run, cwd=tmp_path, env=home_env(tmp_path))
    try:
        wait_for((run / "lock").exists, proc, "the run directory's lock")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        proc.kill()
        proc.wait()
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), code,
                          f"{name} during start-up: nothing was trained or saved")
    assert not run.exists()


def test_sigint_ignored_at_start_stays_ignored_for_the_whole_run(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt")
    run = tmp_path / "run"
    proc = start_cli("train", corpus, *TINY, "--max-steps", "100000", "--log-every", "1", "--run-dir", run,
                     cwd=tmp_path, env=home_env(tmp_path),
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as a shell's `&` job
    seen = []
    try:
        for raw in proc.stderr:  # off a terminal: a plain line per step
            seen.append(raw.decode(errors="replace"))
            if raw.startswith(b"step "):
                break
        assert seen and seen[-1].startswith("step "), "".join(seen)
        proc.send_signal(signal.SIGINT)  # ignored: the process started with it ignored
        proc.send_signal(signal.SIGTERM)  # what README says to send such a run
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        proc.kill()
        proc.wait()
    text = err.decode(errors="replace")
    assert proc.returncode == 143, "".join(seen) + text
    assert "SIGTERM: stopped after step" in text and (run / "latest.pt").is_file()


# ----------------------------------------------------------------------------------------------------------------
# 6. click's usage errors in charrnn's form


@pytest.mark.parametrize("args, needle", [
    (("train", "c.txt", "--time-budget", "5", "minutes"), "unexpected extra argument"),
    (("train", "--time-budgett", "5"), "No such option: --time-budgett"),
    (("train", "--batch-size", "x"), "'--batch-size'"),
    (("sample", "--length", "ten"), "'--length'"),
    (("runs", "a", "b"), "unexpected extra argument"),
])
def test_a_usage_error_from_the_parser_is_one_error_line_and_the_usage(tmp_path, args, needle):
    proc = run_cli(*args, cwd=tmp_path)
    err = proc.stderr.decode(errors="replace")
    lines = err.splitlines()
    assert proc.returncode == 2 and proc.stdout == b"", err
    assert 1 <= len(lines) <= 2 and lines[0].startswith("charrnn: error: ") and needle in lines[0], err
    assert lines[1].startswith(f"usage: charrnn {args[0]} ") and "--help" in lines[1], err
    assert "╭" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------------
# 7. the progress line reads like the run's summary


def test_the_bar_reads_like_the_summary_with_one_clock():
    from charrnn.training.progress import ProgressDisplay

    for total, budget, want in ((None, 60.0, "step 38  24s of 1m00s  12,345 chars/s  val 1.500"),
                                (60, None, "step 38 of 60  24s  12,345 chars/s  val 1.500")):
        stream = io.StringIO()
        display = ProgressDisplay(True, total, budget, 0, stream=stream, terminal=True)
        display.update(38, 0, 24.2, 1.234, 1.5, 2e-3, 12345.0)
        display.close()
        text = stream.getvalue()
        assert want in text, text
        assert not re.search(r"\d(s|it|step)/s", text) and "<" not in text and "[00:" not in text, text


def test_a_finished_run_leaves_no_lock(tiny_run):
    assert (tiny_run / "latest.pt").is_file() and not (tiny_run / "lock").exists()


# ----------------------------------------------------------------------------------------------------------------
# 8. the README and the program say the same


def test_plot_without_matplotlib_and_the_readme_name_the_same_install(monkeypatch):
    import builtins

    from conftest import ROOT

    from charrnn.errors import MissingDependencyError
    from charrnn.store.plot import _pyplot

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingDependencyError) as caught:
        _pyplot()
    install = re.search(r"pip install \S+", caught.value.message).group(0)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    plot_section = readme[readme.index("### plot"):readme.index("### runs")]
    assert install in plot_section, (install, plot_section)


def test_the_readme_says_what_help_shows():
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "ends with an example" not in readme  # the example is near the top of --help
    for command in ("train", "sample", "eval", "runs"):
        text = run_cli(command, "--help", env=cli_env(COLUMNS="200"), check=0).stdout.decode()
        assert "Example: charrnn " + command in text
    assert "Each command's `--help` lists its options with an example" in readme
