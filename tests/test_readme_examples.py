"""Every example in the README runs, in order, as a new user would type it: each fenced code block, in a scratch
directory that starts empty but for a small `corpus.txt` and `held_out.txt` (the files the examples name).

A block is skipped only when the line just before its fence says why:
    <!-- readme-test: not run (REASON) -->
(the install, the test suite itself, torchrun). Shell blocks (no language, `sh`, `bash`, `console`) run in bash
with `charrnn` meaning this checkout's `python -m charrnn`; `python` blocks run in this Python. So that the whole
README runs in bounded time, each `charrnn train` gets a tiny model and a few steps (STAND_INS, put right after
`train`; a later option on the line would win, so the examples name no size), and the Python API's sizes are
scaled down the same way. Every command must exit 0 with nothing written to stderr that says `error`."""

from __future__ import annotations

import re
import subprocess
import sys


from conftest import ROOT, cli_env, make_corpus

SKIP = re.compile(r"<!--\s*readme-test:\s*not run\s*\(([^)]+)\)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL = {"", "sh", "bash", "shell", "console"}
STAND_INS = "--hidden-size 32 --num-layers 2 --batch-size 4 --seq-len 16 --max-steps 4 --eval-every 2"
PYTHON_STAND_INS = [(r"hidden_size=\d+", "hidden_size=32, num_layers=2"),
                    (r"max_steps=\d+", "max_steps=4, eval_every=2, batch_size=4, seq_len=16")]
HANG_GUARD = 900  # seconds for one block: only a hang reaches it


def readme_blocks(text: str) -> list[tuple[int, str, str, str]]:
    """(line number, language, code, skip reason or "") for each fenced block, in order."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        before = lines[i - 1] if i else ""
        skip = SKIP.search(before)
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        blocks.append((i + 1, fence.group(1), "\n".join(lines[i + 1 : end]), skip.group(1) if skip else ""))
        i = end + 1
    return blocks


def test_the_readme_blocks_are_found_and_every_skip_says_why():
    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    run = [b for b in blocks if not b[3]]
    assert len(run) >= 3, blocks  # the main job, the sweep, the Python API at least
    assert any("charrnn train" in b[2] for b in run) and any(b[1] == "python" for b in run)
    for line, language, _, _ in blocks:
        assert language in SHELL | {"python"}, f"README line {line}: a block in {language!r} the test cannot run"
    assert readme_blocks("x\n<!-- readme-test: not run (why) -->\n```\nrm -rf /\n```\n")[0][3] == "why"


def run_block(language: str, code: str, scratch, env) -> subprocess.CompletedProcess:
    if language == "python":
        for pattern, replacement in PYTHON_STAND_INS:
            code = re.sub(pattern, replacement, code)
        command = [sys.executable, "-c", code]
    else:
        code = re.sub(r"\bcharrnn train\b", f"charrnn train {STAND_INS}", code)
        prelude = f'set -e\ncharrnn() {{ "{sys.executable}" -m charrnn "$@"; }}\n'
        command = ["bash", "-c", prelude + code]
    return subprocess.run(command, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=HANG_GUARD)


def test_every_readme_example_runs_in_order_in_a_scratch_directory(tmp_path):
    scratch = tmp_path / "new-user"
    scratch.mkdir()
    make_corpus(scratch / "corpus.txt", n_chars=6000)
    make_corpus(scratch / "held_out.txt", n_chars=800, seed=3)
    env = cli_env(CHARRNN_HOME="", NO_COLOR="1", COLUMNS="200")  # the current directory, as for a new user
    ran = 0
    for line, language, code, skip in readme_blocks((ROOT / "README.md").read_text(encoding="utf-8")):
        if skip:
            continue
        proc = run_block(language, code, scratch, env)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, f"README line {line}:\n{code}\nexit {proc.returncode}\n{err[-3000:]}"
        assert "error" not in err.lower() and "Traceback" not in err, f"README line {line}:\n{code}\n{err[-3000:]}"
        ran += 1
    assert ran >= 3
    runs = sorted(p.name for p in (scratch / "checkpoints").iterdir())
    assert any(name.startswith("lr-0.001-") for name in runs) and any(name.startswith("lr-0.003-") for name in runs)
