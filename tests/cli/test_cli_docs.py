"""The CLI documents itself: every command's --help has an example, the README has a section per command that
mentions every option its --help lists, shell completion works, and --help does not import torch. The README
stays short (at most 12 KB) and docs/guarantees.md names only tests that exist."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env, hang_guard, run_cli

COMMANDS = ["train", "sample", "eval", "corpora", "plot", "info", "runs", "export", "serve"]
WIDE = cli_env(COLUMNS="250", TERMINAL_WIDTH="250")  # no option name is cut by a narrow terminal


def _help(*args) -> str:
    return run_cli(*args, "--help", env=WIDE, check=0).stdout.decode()


def _readme_section(command: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^### {command}\n(.*?)(?=^##)", readme, re.S | re.M)
    assert match, f"README has no '### {command}' section"
    return match.group(1)


def _documented(command: str) -> str:
    """What the docs say about a command: its README section and, where there is one, its docs/cli.md section (the
    full option lists live there, so the README stays a quick start)."""
    text = _readme_section(command)
    full = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {command}\n(.*?)(?=^## |\Z)", full, re.S | re.M)
    return text + (match.group(1) if match else "")


def _options(help_text: str) -> set:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", help_text)) - {"--help"}


def test_every_command_is_documented():
    root = _help()
    listed = set(re.findall(r"^│ (\w+) ", root, re.M))
    assert listed == set(COMMANDS), listed  # a new command needs adding here and a README section
    for command in COMMANDS:
        _readme_section(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_readme_lists_every_option(command):
    text = _help(command)
    assert re.search(rf"Example: charrnn {command}\b", text), text
    options = _options(text)
    assert options, text
    section = _documented(command)
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![a-z0-9-])", section))
    assert not missing, f"neither README '### {command}' nor docs/cli.md '## {command}' mentions {missing}"


def test_shell_completion():
    script = run_cli("--show-completion", "bash", check=0).stdout.decode()
    assert "_CHARRNN_COMPLETE" in script and "complete" in script
    proc = subprocess.run([sys.executable, "-m", "charrnn"], env=cli_env(
        _CHARRNN_COMPLETE="complete_bash", COMP_WORDS="charrnn eval --top", COMP_CWORD="2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=hang_guard(60))
    assert set(proc.stdout.decode().split()) == {"--top", "--top-neurons"}, (proc.returncode, proc.stdout, proc.stderr)


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from charrnn.cli.commands import app; "
            "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['eval', '--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE, timeout=hang_guard(60))
    assert proc.stdout.decode().strip() == "False"


def test_readme_is_short_and_links_its_two_documents():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12 * 1024, len(readme)  # measurement logs go to benchmarks/README.md
    for doc in ("benchmarks/README.md", "docs/guarantees.md", "docs/cli.md"):
        assert f"]({doc})".encode() in readme and (ROOT / doc).is_file(), doc


def test_every_test_named_in_the_guarantees_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/(?:\w+/)?test_\w+\.py)::(test_\w+)`", text)
    assert named, "docs/guarantees.md names no test"
    missing = [f"{path}::{name}" for path, name in named
               if not (ROOT / path).is_file()
               or not re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M)]
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"
