"""Shared test helpers: tiny corpora, a tiny trained run, and running the real CLI in a subprocess."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from browser import browser  # noqa: F401  (the headless Chromium fixture for the browser tests)

ROOT = Path(__file__).resolve().parent.parent

# Every hang guard in the suite (a subprocess's timeout, a wait for an event) is a number of seconds that a quiet
# machine needs far less than, scaled by this one factor: a loaded CI machine gets room, a hang still ends. Read by
# the tests only (charrnn itself never reads it): CHARRNN_TEST_TIMEOUT_FACTOR=10 for a very slow machine.
TIMEOUT_FACTOR = float(os.environ.get("CHARRNN_TEST_TIMEOUT_FACTOR", "4"))
if not TIMEOUT_FACTOR > 0:  # nan or <= 0 would turn every guard into an instant failure
    raise ValueError(f"CHARRNN_TEST_TIMEOUT_FACTOR must be a positive number, not {TIMEOUT_FACTOR}")


def pytest_configure(config):
    # A suite started as a background job (`pytest &` in a script, nohup) inherits SIGINT ignored, and so does
    # every charrnn it starts: charrnn then keeps ignoring it, as a background job should (a test checks that). The
    # tests that send SIGINT are about its default disposition, so the suite starts from it: a Python handler here
    # is reset to the default in each child at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _charrnn_logger_as_it_was():
    """A test that runs the CLI in this process gets its setup_logging: the charrnn logger's handler then writes to
    that test's captured stderr (closed after it) and propagation is off. Put the logger back after every test."""
    logger = logging.getLogger("charrnn")
    handlers, filters, level, propagate, disabled = (list(logger.handlers), list(logger.filters), logger.level,
                                                     logger.propagate, logger.disabled)
    yield
    logger.handlers[:], logger.filters[:] = handlers, filters
    logger.setLevel(level)
    logger.propagate, logger.disabled = propagate, disabled


def hang_guard(seconds: float) -> float:
    """`seconds` (what a quiet machine needs with room to spare) scaled by TIMEOUT_FACTOR: how long a test waits
    before it calls something a hang. Never an assertion about speed."""
    return seconds * TIMEOUT_FACTOR


# a tiny model trains in a second or two
TINY = ["--hidden-size", "32", "--num-layers", "2", "--batch-size", "4", "--seq-len", "16", "--warmup-steps", "5"]


def make_corpus(path: Path, n_chars: int = 6000, seed: int = 0) -> Path:
    """A small deterministic English-like corpus."""
    import random

    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog and then sleeps in warm sun while birds sing".split()
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    path.write_text("".join(out)[:n_chars], encoding="utf-8")
    return path


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, cwd=None, input=None, env=None, timeout=120, check=None) -> subprocess.CompletedProcess:
    """Run `python -m charrnn ARGS` for real; returns the CompletedProcess with bytes stdout/stderr. `timeout` is a
    hang guard in quiet-machine seconds (scaled by TIMEOUT_FACTOR)."""
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        cwd=cwd,
        input=input,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=hang_guard(timeout),
    )
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with `code`, printed exactly one line on stderr, no traceback, nothing on stdout."""
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == b"", proc.stdout
    return lines[0]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory trained once per session with a tiny model through the library."""
    import charrnn

    base = tmp_path_factory.mktemp("tiny_run")
    corpus_path = make_corpus(base / "corpus.txt", n_chars=8000)
    result = charrnn.train(
        str(corpus_path),
        charrnn.ModelConfig(hidden_size=32, num_layers=2),
        charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=40, eval_every=20, warmup_steps=5,
                            val_frac=0.1, test_frac=0.1),
        run_dir=str(base / "run"),
        progress=False,
    )
    assert os.path.exists(result.latest)
    return Path(result.run_dir)
