"""The command line end to end, in subprocesses: help, the main commands, errors as one line with an exit code."""

import json
import subprocess
import sys

from conftest import ROOT, TINY, assert_one_line_error, cli_env, make_corpus, run_cli


def test_help_lists_the_commands_without_importing_torch():
    proc = run_cli("--help", check=0)
    out = proc.stdout.decode()
    for command in ("train", "sample", "eval"):
        assert command in out
    code = "import sys, charrnn.cli.commands; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], env=cli_env(), check=True)


def test_train_sample_eval_end_to_end(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 6000)
    proc = run_cli("train", corpus, *TINY, "--max-steps", "30", "--eval-every", "10", "--run-dir",
                   tmp_path / "run", cwd=tmp_path, check=0)
    assert proc.stdout == b""  # progress and messages go to stderr
    assert b"done: 30 steps" in proc.stderr
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30]
    sample = run_cli("sample", tmp_path / "run", "--length", "50", "--seed", "1", "--no-newline", check=0)
    assert len(sample.stdout.decode("utf-8")) == 50
    result = run_cli("eval", tmp_path / "run", "--json", check=0)
    assert json.loads(result.stdout)["chars"] > 0


def test_sample_and_eval_find_the_newest_run(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 4000)
    run_cli("train", corpus, *TINY, "--max-steps", "3", "-q", cwd=tmp_path, check=0)
    runs = list((tmp_path / "checkpoints").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("corpus-")
    assert len(run_cli("sample", "-n", "20", "--no-newline", cwd=tmp_path, check=0).stdout.decode()) == 20


def test_train_from_stdin(tmp_path):
    text = make_corpus(tmp_path / "c.txt", 4000).read_bytes()
    proc = run_cli("train", "-", *TINY, "--max-steps", "2", "--run-dir", tmp_path / "run", "-q", input=text, check=0)
    assert (tmp_path / "run" / "latest.pt").exists(), proc.stderr


def test_corpus_errors(tmp_path):
    assert_one_line_error(run_cli("train", tmp_path / "nope.txt"), 66, "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_one_line_error(run_cli("train", tmp_path / "empty.txt", *TINY), 65, "empty")
    (tmp_path / "short.txt").write_text("too short for one window", encoding="utf-8")
    assert_one_line_error(run_cli("train", tmp_path / "short.txt", *TINY), 65, "--batch-size", "--seq-len")
    (tmp_path / "bad.txt").write_bytes(b"ok text " * 10 + b"\xc3\x28 more")
    assert_one_line_error(run_cli("train", tmp_path / "bad.txt", *TINY), 65, "byte offset 80")
    (tmp_path / "dir").mkdir()
    assert_one_line_error(run_cli("train", tmp_path / "dir"), 66, "no files matching")


def test_usage_errors_exit_2(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    assert_one_line_error(run_cli("train", corpus, "--cell", "transformer"), 2, "--cell")
    assert_one_line_error(run_cli("train", corpus, "--time-budget", "soon"), 2, "duration")
    assert run_cli("train", corpus, "--no-such-option").returncode == 2


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "train", tmp_path / "nope.txt")
    assert proc.returncode != 0 and b"Traceback" in proc.stderr


def test_python_dash_m_and_console_script_agree():
    proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", "--help"], env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.returncode == 0 and b"--temperature" in proc.stdout
