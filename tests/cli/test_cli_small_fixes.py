"""The first hour's small wrong things (issue 16), each through the real CLI: corpus directories that link back,
sample's last newline, raw carriage returns in `eval --show`, view options without their view, a file of only
unseen characters, `eval RUN` on a run trained from stdin or a FIFO, `--version`, and clean --help texts."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest

import charrnn
from charrnn.data.dataset import scan_corpus
from conftest import TINY, ROOT, assert_one_line_error, cli_env, hang_guard, make_corpus, run_cli

WIDE = cli_env(COLUMNS="250", TERMINAL_WIDTH="250")


# ----------------------------------------------------------------------------------------------------------------
# 1. corpus directories: symlinked directories not followed unless asked, a file reached twice read once


def _linked_corpus(tmp_path):
    """corpus/a.txt, corpus/sub/b.txt, corpus/sub/up -> .. (a link back up), corpus/same.txt -> a.txt, and
    corpus/ext -> ../elsewhere (a symlinked directory holding c.txt)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    a = make_corpus(root / "a.txt", 3000, seed=1)
    b = make_corpus(root / "sub" / "b.txt", 2000, seed=2)
    (root / "sub" / "up").symlink_to("..")
    (root / "same.txt").symlink_to("a.txt")
    (tmp_path / "elsewhere").mkdir()
    c = make_corpus(tmp_path / "elsewhere" / "c.txt", 1000, seed=3)
    (root / "ext").symlink_to("../elsewhere")
    return root, a, b, c


def test_scan_reads_each_file_once_and_enters_linked_directories_only_when_asked(tmp_path):
    root, a, b, c = _linked_corpus(tmp_path)
    scan = scan_corpus(str(root))
    assert scan.files == [str(a), str(b)]
    assert scan.duplicates == 1  # same.txt is a.txt
    assert [os.path.basename(p) for p in scan.links_not_followed] == ["ext", "up"]
    followed = scan_corpus(str(root), follow_links=True)
    assert sorted(map(os.path.realpath, followed.files)) == sorted(map(str, (a, b, c)))  # up -> .. entered never
    assert followed.links_not_followed == ()


def test_cli_corpus_directory_that_links_back_is_not_multiplied(tmp_path):
    """With sub/up -> .., a 6 KB corpus once became dozens of copies: now each file is read once, and the
    start-of-run line says how many files and characters were read (exit 0)."""
    root, a, b, c = _linked_corpus(tmp_path)
    run = ["--max-steps", "1", "--eval-every", "1", *TINY]
    proc = run_cli("train", root, "--run-dir", tmp_path / "run", *run, check=0)
    err = proc.stderr.decode()
    assert "read 2 files, 5,000 characters" in err, err
    assert "1 file(s) reached twice" in err and "not followed" in err and "--follow-links" in err
    info = json.loads(run_cli("info", tmp_path / "run", "--json", check=0).stdout)
    assert info["corpus"]["chars"] == 5000

    proc = run_cli("train", root, "--follow-links", "--run-dir", tmp_path / "run2", *run, check=0)
    assert "read 3 files, 6,000 characters" in proc.stderr.decode(), proc.stderr.decode()
    assert json.loads(run_cli("info", tmp_path / "run2", "--json", check=0).stdout)["corpus"]["chars"] == 6000
    # eval re-reads the run's corpus the way it was read (follow_links is part of the run's configuration)
    assert json.loads(run_cli("eval", tmp_path / "run2", "--json", check=0).stdout)["chars"] > 0


# ----------------------------------------------------------------------------------------------------------------
# 2. sample ends its output with a newline unless asked not to


def test_cli_sample_ends_with_a_newline_unless_no_newline(tiny_run):
    for seed in range(1, 40):  # a sample whose text does not end with a newline of its own
        want = charrnn.sample(str(tiny_run), length=30, seed=seed)[0]
        if not want.endswith("\n"):
            break
    args = ("sample", tiny_run, "-n", "30", "--seed", seed)
    assert run_cli(*args, check=0).stdout.decode() == want + "\n"
    assert run_cli(*args, "--no-newline", check=0).stdout.decode() == want
    # several samples: still separated by a blank line, and one newline at the end
    texts = charrnn.sample(str(tiny_run), length=30, seed=seed, num_samples=3)
    out = run_cli(*args, "--num-samples", "3", check=0).stdout.decode()
    joined = "\n\n".join(texts)
    assert out == joined + ("" if joined.endswith("\n") else "\n")
    # text that already ends with a newline gets no second one
    for seed in range(1, 200):
        ending = charrnn.sample(str(tiny_run), length=12, seed=seed)[0]
        if ending.endswith("\n"):
            assert run_cli("sample", tiny_run, "-n", "12", "--seed", seed, check=0).stdout.decode() == ending
            break


# ----------------------------------------------------------------------------------------------------------------
# 3. eval --show never prints a raw carriage return


@pytest.fixture(scope="module")
def cr_run(tmp_path_factory):
    """A tiny run trained on text with old-Mac (CR-only) line ends, so \\r is in its vocabulary."""
    base = tmp_path_factory.mktemp("cr_run")
    text = make_corpus(base / "lf.txt", 3000).read_text(encoding="utf-8").replace("\n", "\r")
    (base / "cr.txt").write_bytes(text.encode("utf-8"))
    charrnn.train(str(base / "cr.txt"), charrnn.ModelConfig(hidden_size=16, num_layers=1),
                  charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=2, eval_every=2, warmup_steps=1,
                                      val_frac=0.1, test_frac=0.1),
                  run_dir=str(base / "run"), progress=False)
    sample = base / "show.txt"
    sample.write_bytes("The quick brown fox.\rThen sleeps in warm sun.\rA lazy dog.".encode("utf-8"))
    return base / "run", sample


@pytest.mark.parametrize("colour", [False, True])
def test_cli_show_maps_carriage_returns_visibly(cr_run, colour):
    run, sample = cr_run
    env = cli_env(FORCE_COLOR="1") if colour else cli_env(NO_COLOR="1")
    if colour:
        env.pop("NO_COLOR", None)
    proc = run_cli("eval", run, sample, "--show", env=env, check=0)
    out = proc.stdout.decode("utf-8")
    assert "\r" not in out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert ("\x1b[" in out) == colour
    lines = plain.split("\n")
    assert lines[0] == "The quick brown fox.\u240d"  # shown as U+240D and a line break, so nothing overprints
    if colour:
        assert plain == "The quick brown fox.\u240d\nThen sleeps in warm sun.\u240d\nA lazy dog.\n"
    else:
        assert len(lines[1]) <= len(lines[0]) and lines[2] == "Then sleeps in warm sun.\u240d"


# ----------------------------------------------------------------------------------------------------------------
# 4. --layer / --top without the view they apply to


@pytest.mark.parametrize("args, option", [
    (["--layer", "1"], "--layer"),
    (["--show", "--layer", "1"], "--layer"),
    (["--top", "3"], "--top"),
    (["--neuron", "1", "--top", "3"], "--top"),
    (["--max-chars", "100"], "--max-chars"),
    (["--show", "--streams", "4"], "--streams"),
])
def test_view_options_without_their_view_are_usage_errors(tiny_run, args, option):
    assert_one_line_error(run_cli("eval", tiny_run, *args), 2, option, "applies to")


# ----------------------------------------------------------------------------------------------------------------
# 5. --skip-unknown on a file of only unseen characters


def test_skip_unknown_on_only_unseen_characters_says_so(tiny_run, tmp_path):
    path = tmp_path / "unseen.txt"
    path.write_text("ÆØÅ€", encoding="utf-8")
    for view in ([], ["--show"]):
        assert_one_line_error(run_cli("eval", tiny_run, path, "--skip-unknown", *view), 65,
                              f"{path} has no characters the model knows (all 4 are unseen)")


# ----------------------------------------------------------------------------------------------------------------
# 6. eval RUN without FILE on a run trained from stdin or a FIFO


def test_eval_without_file_on_a_run_trained_from_stdin_or_a_fifo_refuses_at_once(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 3000).read_bytes()
    run = ["--max-steps", "1", *TINY, "-q"]
    run_cli("train", "-", "--run-dir", tmp_path / "stdin-run", *run, input=corpus, check=0)
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write(corpus)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    run_cli("train", fifo, "--run-dir", tmp_path / "fifo-run", *run, check=0)
    writer.join(timeout=hang_guard(10))
    for name, what in (("stdin-run", "standard input"), ("fifo-run", f"{fifo} (a FIFO)")):
        for view in ([], ["--show"]):
            proc = run_cli("eval", tmp_path / name, *view, timeout=60)  # used to block forever on the FIFO
            assert_one_line_error(proc, 2, f"trained on {what}", "pass the text file to score as FILE")
    # with FILE it scores as usual
    assert json.loads(run_cli("eval", tmp_path / "fifo-run", tmp_path / "corpus.txt", "--json", check=0).stdout)
    # resuming without the corpus would wait on the FIFO as well: refused, one line
    proc = run_cli("train", "--resume", tmp_path / "fifo-run", "--max-steps", "2", timeout=60)
    assert_one_line_error(proc, 2, f"trained on {fifo} (a FIFO)", "pass the corpus again")


# ----------------------------------------------------------------------------------------------------------------
# 7. --version


def test_version_prints_the_version_to_stdout():
    proc = run_cli("--version", check=0)
    assert proc.stdout.decode() == f"charrnn {charrnn.__version__}\n" and proc.stderr == b""


# ----------------------------------------------------------------------------------------------------------------
# 8. --help texts: no default cut to a dangling " .", no <bool> type on a flag that takes no value


def test_help_texts_have_no_dangling_period_and_flags_no_type():
    root = run_cli("--help", env=WIDE, check=0).stdout.decode()
    commands = re.findall(r"^│ (\w+) ", root, re.M)
    assert "train" in commands and "eval" in commands
    for args in [[], *([c] for c in commands)]:
        text = run_cli(*args, "--help", env=WIDE, check=0).stdout.decode()
        for line in text.splitlines():
            body = line.strip(" │")
            assert not re.search(r" \.( |$)", body), (args, line)
            assert "<bool>" not in body, (args, line)
    assert "--follow-links" in run_cli("train", "--help", env=WIDE, check=0).stdout.decode()
    readme = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "--version" in readme and "--no-newline" in readme and "--follow-links" in readme
