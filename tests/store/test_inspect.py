"""Inspection and reporting: `info`, `plot`, the progress display (a bar on a terminal, plain lines on a file or pipe),
samples while training, the end-of-training summary, --quiet, CHARRNN_HOME."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from charrnn.store.checkpoint import load_checkpoint
from charrnn.store.info import printable
from charrnn.training.report import sparkline, summary_rows
from conftest import TINY, assert_one_line_error, cli_env, hang_guard, make_corpus, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def home_with_run(tmp_path, tiny_run):
    """A CHARRNN_HOME whose checkpoints/ holds a copy of the tiny run."""
    home = tmp_path / "home"
    shutil.copytree(tiny_run, home / "checkpoints" / "tiny")
    return home


def test_printable_escapes_control_characters():
    assert printable("\n\t\r a\\b\x00é\u200b") == "\\n\\t\\r a\\\\b\\x00é\\u200b"


def test_info_json_describes_the_checkpoint(tiny_run):
    proc = run_cli("info", tiny_run / "latest.pt", "--json", check=0)
    info = json.loads(proc.stdout)
    for key in ("checkpoint", "architecture", "parameters", "vocab", "vocab_printable", "step", "epoch",
                "best_val_loss", "best_val_bpc", "corpus", "torch_version", "train_config"):
        assert key in info, key
    decided = load_checkpoint(str(tiny_run / "latest.pt"))["model_config"]["dropout"]  # --dropout auto's choice
    assert isinstance(decided, float)
    assert info["architecture"] == {"cell": "tanh", "hidden_size": 32, "num_layers": 2, "dropout": decided,
                                    "vocab_size": len(info["vocab"])}
    V, H = len(info["vocab"]), 32
    assert info["parameters"] == V * H + 2 * H * H + H * H + 2 * H + H * V + V  # embed, w_hh x2, w_xh, biases, head
    assert info["step"] == 40
    assert info["weights"].startswith("moving average (--ema 0.995, about the last 200 steps)")  # the default
    assert math.isclose(info["best_val_bpc"], info["best_val_loss"] / math.log(2))
    assert len(info["corpus"]["sha256"]) == 64 and info["corpus"]["chars"] == 8000
    assert info["torch_version"].startswith("2.")
    assert "\\n" in info["vocab_printable"] and "\n" not in info["vocab_printable"]
    assert proc.stderr == b""


def test_info_text_and_the_newest_run_under_charrnn_home(home_with_run, tmp_path):
    proc = run_cli("info", cwd=tmp_path, env=cli_env(CHARRNN_HOME=home_with_run), check=0)
    text = proc.stdout.decode()
    assert str(home_with_run / "checkpoints" / "tiny" / "latest.pt") in text
    for label in ("architecture:", "parameters:", "weights:", "vocabulary:", "steps:", "best val loss:", "corpus sha256:",
                  "torch:"):
        assert label in text, label
    assert "tanh RNN, 2 layer(s) x 32 hidden units" in text
    empty = run_cli("info", cwd=tmp_path, env=cli_env(CHARRNN_HOME=tmp_path / "nowhere"))
    assert_one_line_error(empty, 66, "nowhere")


def test_sample_finds_the_newest_run_under_charrnn_home(home_with_run, tmp_path):
    proc = run_cli("sample", "--length", "20", "--seed", "1", "--no-newline", cwd=tmp_path,
                   env=cli_env(CHARRNN_HOME=home_with_run))
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.decode()) == 20


def test_plot_writes_a_png(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "loss.png"
    proc = run_cli("plot", tiny_run, "--output", out, check=0)
    assert proc.stdout.decode().strip() == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_without_matplotlib_is_a_one_line_error(tiny_run, tmp_path):
    # sys.modules[name] = None makes `import name` fail, as if matplotlib were not installed
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['charrnn'] + sys.argv[1:]; "
            "from charrnn.cli.commands import main; main()")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, "plot", str(tiny_run), "--output", str(tmp_path / "x.png")],
                          env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=hang_guard(60))
    assert_one_line_error(proc, 69, "matplotlib", 'pip install "charrnn[plot]"')
    assert not (tmp_path / "x.png").exists()


def test_plot_of_a_directory_without_metrics_exits_66(tmp_path):
    assert_one_line_error(run_cli("plot", tmp_path), 66, "metrics.jsonl")


def test_sparkline_scales_min_to_max():
    assert sparkline([7.0, 3.0, 0.0]) == "█▄▁"
    assert sparkline([2.0, 2.0]) == "▁▁"
    assert len(sparkline([float(i) for i in range(1000)], width=40)) == 40
    assert sparkline([]) == ""


def test_summary_rows_report_nats_bits_steps_and_paths():
    result = SimpleNamespace(step=120, epoch=2, stopped_by="time_budget", elapsed=75.0, best_val_loss=math.log(2) * 1.5,
                             last_train_loss=1.2, run_dir="/r", latest="/r/latest.pt", best="/r/best.pt",
                             val_history=[2.0, 1.5, 1.04])
    rows = dict(summary_rows(result, val_losses=result.val_history))
    assert rows["best val bits/char"] == "1.5000"
    assert rows["best val loss"].startswith("1.0397 nats/char")
    assert rows["steps"].startswith("120 (epoch 2, stopped by time budget")
    assert rows["time"] == "1m15s training"
    assert rows["latest checkpoint"] == "/r/latest.pt" and rows["best checkpoint"] == "/r/best.pt"
    assert rows["val loss"].startswith("█")
    # the wall time, and why it differs; a resumed run's training time counts its earlier sessions too
    timed = dict(summary_rows(SimpleNamespace(**{**vars(result), "elapsed_before": 45.0}), val_losses=[2.0, 1.5],
                              wall=91.0))
    assert timed["time"].startswith("1m15s training (45s of it before this resume); 1m31s wall for this command (with "
                                    "start-up and the final validation and save, which training time leaves out)")
    assert timed["val loss"] == "2.000 → 1.500"  # no sparkline of fewer than three points
    assert dict(summary_rows(result, val_losses=[2.358]))["val loss"] == "2.358"


def run_on_a_terminal(*args, cwd, columns: int = 200, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI with its stderr on a pseudo-terminal (as typed at a terminal); stdout and stderr as bytes."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read()
    proc.wait(timeout=hang_guard(timeout))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, b"".join(chunks).replace(b"\r\n", b"\n"))


def test_train_on_a_terminal_shows_a_bar_with_messages_above_it(corpus, tmp_path):
    proc = run_on_a_terminal("train", corpus, "--max-steps", "6", "--eval-every", "3", "--run-dir", tmp_path / "run",
                             *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "done: 6 steps in" in err
    for field in ("100%|", "step 6 of 6", "epoch ", "loss ", "val ", "lr ", " chars/s", "validation on "):
        assert field in err, field
    assert "<00:00" not in err and "it/s" not in err  # the run's own clock and rate, not tqdm's
    for label in ("best val loss", "best val bits/char", "steps", "time", "latest checkpoint", "best checkpoint"):
        assert label in err, label
    assert str(tmp_path / "run" / "latest.pt") in err
    # the samples (steps 3 and 6) and log lines start on a line of their own: the bar's frame was cleared first
    lines = re.split(r"[\r\n]", err)
    assert "--- step 3, val loss" in " ".join(line for line in lines if line.startswith("--- step 3,"))
    assert any(line.startswith("--- step 6, val loss") for line in lines), err
    assert any(line.startswith("charrnn: precision:") and line.endswith("; tanh loops compiled (numba)")
               for line in lines), err  # the CPU fp32 route, where numba is installed


def test_train_to_a_file_or_pipe_writes_plain_lines_without_frames(tmp_path):
    """Off a terminal: no bar frames ('\r'), one line per --log-every interval, every message on its own line,
    the final validation announced, samples shown, and a summary that explains its times."""
    corpus = make_corpus(tmp_path / "corpus.txt", 6000)
    with open(tmp_path / "err.txt", "wb") as err_file:  # stderr to a file, as with 2>train.log
        proc = subprocess.run([sys.executable, "-m", "charrnn", "train", corpus, *TINY, "--max-steps", "12",
                               "--eval-every", "6", "--log-every", "4", "--run-dir", tmp_path / "run"],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=err_file,
                              timeout=hang_guard(120))
    assert proc.returncode == 0 and proc.stdout == b""
    err = (tmp_path / "err.txt").read_bytes().decode()
    assert "\r" not in err and "\x1b" not in err, err
    lines = err.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["4/12", "8/12", "12/12"], err
    for line in steps:
        assert re.fullmatch(r"step \d+/12  epoch \d+  loss \d\.\d{3}( +val \d\.\d{3})?  lr \S+  (- |[\d,]+ )chars/s"
                            r"  elapsed \d+s", line), line
    assert "val " in steps[-1]
    # the final validation; the one at step 6 (540 characters) is too quick to announce
    assert [re.sub(r"\d+", "N", line) for line in lines if "validation on" in line] == [
        "final validation on N characters ..."]
    messages = [line for line in lines if "charrnn:" in line]
    assert messages and all(line.startswith("charrnn: ") for line in messages)  # never glued onto another line
    assert any(line.startswith("charrnn: dropout ") for line in lines)
    assert [line.split(",")[0] for line in lines if line.startswith("--- step ")] == ["--- step 6", "--- step 12"]
    samples = (tmp_path / "run" / "samples.txt").read_text(encoding="utf-8")
    assert samples.startswith("--- step 6, val loss ") and "\n--- step 12, val loss " in samples
    assert re.search(r"done: 12 steps in [\d.]+s of training \([\d.]+s wall\)", err), err
    assert "wall for this command" in err


def test_a_budget_run_off_a_terminal_logs_mid_run_messages_on_their_own_lines(corpus, tmp_path):
    """Messages logged while training (the --dropout auto decision after 25 steps of a budget run, a skipped
    non-finite step) are lines of their own between the progress lines."""
    import faults

    hooks = json.dumps({"nan_at": {"steps": [3]}})
    proc = subprocess.run([sys.executable, faults.__file__, hooks, "train", corpus, *TINY, "--time-budget", "1h",
                           "--max-steps", "30", "--eval-every", "5000", "--log-every", "2", "--on-nonfinite", "skip", "--sample-every", "0",
                           "--run-dir", tmp_path / "run"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=hang_guard(120))
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "\r" not in err
    lines = err.splitlines()
    assert "charrnn: non-finite loss at step 3: skipped the step" in lines, err
    decided = [line for line in lines if "(auto: about" in line]
    assert len(decided) == 1 and decided[0].startswith("charrnn: dropout "), err
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 15 and all(line.endswith(" of 1h00m00s") for line in steps), err
    assert "final validation on" in err and "--- step" not in err  # --sample-every 0: no samples
    assert not (tmp_path / "run" / "samples.txt").exists()


def test_quiet_train_prints_nothing(corpus, tmp_path):
    proc = run_cli("train", corpus, "--max-steps", "2", "--eval-every", "2", "--quiet", "--run-dir", tmp_path / "r",
                   *TINY, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == b"" and proc.stderr == b""
    assert (tmp_path / "r" / "latest.pt").exists()
    assert (tmp_path / "r" / "samples.txt").read_text().startswith("--- step 2, val loss ")  # hidden, still kept


def test_default_run_dir_goes_under_charrnn_home(corpus, tmp_path):
    home = tmp_path / "home"
    proc = run_cli("train", corpus, "--max-steps", "1", "--quiet", *TINY, cwd=tmp_path, env=cli_env(CHARRNN_HOME=home))
    assert proc.returncode == 0, proc.stderr.decode()
    runs = os.listdir(home / "checkpoints")
    assert len(runs) == 1 and runs[0].startswith("corpus-")
    assert not (tmp_path / "checkpoints").exists()


def test_budget_run_bar_counts_seconds_with_an_eta(corpus, tmp_path):
    proc = run_on_a_terminal("train", corpus, "--time-budget", "2s", "--eval-every", "5", "--run-dir", tmp_path / "run",
                             *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    # one clock: the step, elapsed of the budget, chars/s, the last val loss; no tqdm clock or rate units
    assert re.search(r"step \d+  \d+s of 2s  (-|[\d,]+) chars/s  val \d", err), err
    assert "lr " in err and "stopped by time budget" in err and "it/s" not in err and not re.search(r"\[\d\d:\d\d<", err)
