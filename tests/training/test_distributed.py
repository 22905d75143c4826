"""torchrun + torch.distributed (gloo on CPU): 2 ranks with B/2 streams each train the model 1 process with B does;
resume is exact; a failing rank or a non-finite loss stops every rank; SIGTERM from torchrun saves once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charrnn.store.checkpoint import load_checkpoint

from conftest import cli_env, hang_guard, make_corpus, run_cli

FAULTS = Path(__file__).resolve().parent.parent / "faults.py"
SMALL = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--eval-every", "10", "-q"]


def torchrun(*args, cwd, env=None, timeout=150, wait=True, hooks=None):
    """torchrun with 2 processes of the CLI; `hooks` installs faults from tests/faults.py in each first."""
    entry = [str(FAULTS), json.dumps(hooks)] if hooks else ["-m", "charrnn"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *entry, *map(str, args)]
    env = env or cli_env(CHARRNN_DIST_TIMEOUT=round(hang_guard(60)))
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=hang_guard(timeout))


def losses(path):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, open(path))]


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "c.txt", 6000)


def test_two_ranks_equal_one_process(tmp_path, corpus):
    # no dropout: each rank draws its own masks, so with dropout the two runs differ by design
    proc = torchrun("train", corpus, *SMALL, "--dropout", "0", "--max-steps", "20", "--run-dir", "ddp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    run_cli("train", corpus, *SMALL, "--dropout", "0", "--max-steps", "20", "--run-dir", "one", cwd=tmp_path, check=0)
    a, b = load_checkpoint(str(tmp_path / "ddp" / "latest.pt")), load_checkpoint(str(tmp_path / "one" / "latest.pt"))
    assert a["progress"]["world_size"] == 2
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["hidden"], b["hidden"], rtol=1e-5, atol=1e-6)  # all ranks' streams gathered
    for (s1, l1, v1), (s2, l2, v2) in zip(losses(tmp_path / "ddp" / "metrics.jsonl"),
                                          losses(tmp_path / "one" / "metrics.jsonl")):
        assert s1 == s2
        assert (l1 or v1) == pytest.approx(l2 or v2, rel=1e-5)  # val counts every character once across ranks
    # rank 0 refusing the run directory stops every rank at once, with no rank left waiting in a collective
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "20", "--run-dir", "ddp", cwd=tmp_path, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.count("charrnn: error: run directory ddp already holds a run") == 1, err[-3000:]
    assert "Connection closed" not in err and "[rank1]" not in err, err[-3000:]
    # a different world size is refused on resume, one clear line
    proc = run_cli("train", "--resume", tmp_path / "ddp", "--max-steps", "30", cwd=tmp_path)
    assert proc.returncode == 2 and b"same number" in proc.stderr


def test_resume_under_ddp_is_exact(tmp_path, corpus):
    flags = [*SMALL, "--dropout", "0.2", "--warmup-steps", "0", "--min-lr-frac", "1"]  # constant lr
    proc = torchrun("train", corpus, *flags, "--max-steps", "20", "--run-dir", "full", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    proc = torchrun("train", corpus, *flags, "--max-steps", "12", "--run-dir", "part", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    proc = torchrun("train", "--resume", "part", "--max-steps", "20", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    a, b = load_checkpoint(str(tmp_path / "full" / "latest.pt")), load_checkpoint(str(tmp_path / "part" / "latest.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    part = [row for row in losses(tmp_path / "part" / "metrics.jsonl") if row[0] != 12]  # its own end-of-run eval
    assert losses(tmp_path / "full" / "metrics.jsonl") == part


def test_nan_on_one_rank_stops_all_and_a_dead_rank_stops_all(tmp_path, corpus):
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "30", "--run-dir", "nan", cwd=tmp_path,
                    hooks={"nan_at": {"steps": [15], "rank": 1}})
    assert proc.returncode != 0
    # every rank stops at the same step on the all-reduced verdict (tests/training/test_trainer_parts.py checks the
    # agreement itself); rank 0 alone says so
    assert proc.stderr.decode().count("non-finite loss at step 15") == 1
    assert load_checkpoint(str(tmp_path / "nan" / "latest.pt"))["progress"]["step"] == 10  # last good one kept
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "30", "--run-dir", "crash", cwd=tmp_path,
                    hooks={"crash_at": {"rank": 1, "step": 15}})
    assert proc.returncode != 0
    # no hang: torchrun stops the surviving rank (torchrun's hang guard above would raise)
    assert load_checkpoint(str(tmp_path / "crash" / "latest.pt"))["progress"]["step"] == 10


def test_sigterm_from_torchrun_saves_once(tmp_path, corpus):
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "100000", "--run-dir", "run", cwd=tmp_path, wait=False)
    deadline = time.monotonic() + hang_guard(90)
    while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does to the whole job
    _, err = proc.communicate(timeout=hang_guard(90))
    text = err.decode()
    assert text.count("SIGTERM: stopped after step") == 1, text[-3000:]  # rank 0 alone reports and saves
    ckpt = load_checkpoint(str(tmp_path / "run" / "latest.pt"))
    assert ckpt["progress"]["step"] > 0 and ckpt["progress"]["world_size"] == 2


def test_batch_must_divide_among_ranks(tmp_path, corpus):
    proc = torchrun("train", corpus, "--hidden-size", "8", "--batch-size", "5", "--seq-len", "8", "--max-steps", "2",
                    "--run-dir", "r", "-q", cwd=tmp_path)
    assert proc.returncode != 0
    assert b"--batch-size 5 does not divide among 2 processes" in proc.stderr


# -- the corpus cache under torchrun: the others wait for the first encode, and its failure is everyone's ---------


def _cache_env(tmp_path, **extra):
    """A corpus cache of the test's own that every corpus goes through (CHARRNN_CACHE_MIN_BYTES=0)."""
    return cli_env(CHARRNN_CACHE_DIR=tmp_path / "cache", CHARRNN_CACHE_MIN_BYTES=0, **extra)


def _exit_codes(err: str) -> dict:
    """Each failed rank's exit code, from torchrun's failure report ("rank : 1 (local_rank: 1)", "exitcode : 74")."""
    import re

    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", err)
    return {int(rank): int(code) for rank, code in found}


def _frames_of_ours(err: str) -> list:
    """Traceback frames in charrnn's or the tests' code (a rank's traceback; torchrun's own has none)."""
    return [line for line in err.splitlines()
            if line.strip().startswith('File "') and ("/charrnn/" in line or "/tests/" in line)]


def test_ranks_wait_for_a_first_encode_that_outlasts_the_collective_timeout(tmp_path, corpus):
    """Local rank 0 encodes the corpus into the cache for longer than CHARRNN_DIST_TIMEOUT (an injected delay,
    by construction longer): rank 1 waits for it on a group of its own, then finds the cache, and both train."""
    timeout = round(hang_guard(3))
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "4", "--run-dir", "slow", cwd=tmp_path,
                    env=_cache_env(tmp_path, CHARRNN_DIST_TIMEOUT=timeout),
                    hooks={"slow_encode": {"seconds": timeout + 3, "local_rank": 0}})
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    assert load_checkpoint(str(tmp_path / "slow" / "latest.pt"))["progress"]["step"] == 4
    cached = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert cached == [".ids", ".json"], cached  # encoded once, and no temp file left


@pytest.mark.parametrize("error, needle, code", [("memory", "out of memory while reading and encoding the corpus", 1),
                                                 ("oserror", "cannot write corpus cache", 74)])
def test_a_first_encode_that_raises_stops_every_rank_with_one_error(tmp_path, corpus, error, needle, code):
    """A MemoryError (not a charrnn error) or an OSError while local rank 0 encodes: every rank exits with the
    same exit code at once (none waits for a collective to time out), rank 0 says why in one line, no traceback,
    and neither a run directory nor a temp file is left."""
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "4", "--run-dir", "r", cwd=tmp_path,
                    env=_cache_env(tmp_path), hooks={"encode_fails": {"error": error, "local_rank": 0}})
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("charrnn:")]
    assert len(lines) == 1 and lines[0].startswith("charrnn: error: ") and needle in lines[0], err[-3000:]
    assert not _frames_of_ours(err), err[-3000:]  # torchrun's own traceback of its ChildFailedError only
    # every rank raises the agreed error; whichever exits first, torchrun may stop the other before it exits itself
    codes = _exit_codes(err)
    assert code in codes.values() and set(codes.values()) <= {code, -15}, err[-3000:]
    assert not (tmp_path / "r").exists()
    assert not any((tmp_path / "cache").iterdir())


def test_a_malformed_dist_timeout_is_one_line_under_torchrun(tmp_path, corpus):
    proc = torchrun("train", corpus, *SMALL, "--max-steps", "4", "--run-dir", "r", cwd=tmp_path,
                    env=cli_env(CHARRNN_DIST_TIMEOUT="5 minutes"))
    err = proc.stderr.decode(errors="replace")
    assert [line for line in err.splitlines() if line.startswith("charrnn:")] == [
        "charrnn: error: CHARRNN_DIST_TIMEOUT must be a number of seconds > 0 (default 300), not '5 minutes'"], err
    # each rank refuses on its own, before any collective: the first to exit gets the other stopped by torchrun
    # (-15, or 143 where its start-up's SIGTERM handler was already in place; it says nothing)
    codes = _exit_codes(err)
    assert 2 in codes.values() and set(codes.values()) <= {2, -15, 143} and not _frames_of_ours(err), err[-3000:]
    assert not (tmp_path / "r").exists()
