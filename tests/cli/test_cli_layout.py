"""Issue 29: the command line is one module per command plus what they share (commands.py: the app and `main`;
common.py: error handling, logging, shared options), each small enough to read: a module under 400 lines, no
function body over 60 lines (an option list in a signature is not body)."""

from __future__ import annotations

import ast
import pathlib

CLI = pathlib.Path(__file__).resolve().parents[2] / "charrnn" / "cli"


def test_each_command_is_its_own_module_and_the_app_lists_them_in_order():
    from charrnn.cli import commands

    registered = [(info.name, info.callback) for info in commands.app.registered_commands]
    assert [name for name, _ in registered] == ["train", "sample", "eval", "corpora", "plot", "info", "runs",
                                                "export", "serve"]
    modules = [callback.__module__ for _, callback in registered]
    assert len(set(modules)) == len(modules)  # one module per command
    assert all(m.startswith("charrnn.cli.") and m != "charrnn.cli.commands" for m in modules), modules
    assert callable(commands.main)  # the console script `charrnn = charrnn.cli.commands:main`


def test_cli_modules_are_under_400_lines_and_function_bodies_under_60():
    too_long, long_bodies = [], []
    for path in sorted(CLI.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines >= 400:
            too_long.append((path.name, lines))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1  # from the docstring (or first statement) on
                if body > 60:
                    long_bodies.append((path.name, node.name, body))
    assert too_long == [] and long_bodies == []
