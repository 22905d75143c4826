"""Shape rules for the package that review asked for, kept by tests: shipped code reads no test-only switches, the
training loop fits on one screen, and no function grows past what a reader can hold."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "charrnn"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE).as_posix(), node.name, node.end_lineno - node.lineno + 1


def test_shipped_code_reads_no_test_switches():
    offenders = [p.name for p in PACKAGE.rglob("*.py") if "CHARRNN_TEST_" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_training_loop_fits_on_one_screen():
    lengths = {(module, name): n for module, name, n in _functions()}
    assert lengths[("training/trainer.py", "run")] <= 60


def test_no_function_is_longer_than_about_80_lines():
    # cli/train.py's `train` command is mostly its 40 option declarations
    long = [(m, f, n) for m, f, n in _functions() if n > 90 or (n > 80 and (m, f) != ("cli/train.py", "train"))]
    assert long == []


# issue 29's size rules, for the whole package
MODULE_LINES, FUNCTION_BODY, CLASS_LINES, INIT_LINES = 400, 60, 250, 40

# what was still over the rules when this test was written (owned by the trainer, cli and serve work then under
# way), with its size then: an entry may only shrink, and goes when it keeps the rule; nothing may join it
KNOWN_OVER = {
    ("module", "cli/commands.py"): 655,
    ("module", "serve/app.py"): 410,
    ("module", "training/launch.py"): 621,
    ("module", "training/trainer.py"): 650,
    ("function", "training/launch.py:train"): 64,
    ("class", "training/trainer.py:Trainer"): 483,
}


def _sizes(root: pathlib.Path = PACKAGE):
    """(kind, where, size, the rule's limit) for every module, function body (its statements, docstring included,
    below the signature) and class in the package."""
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root).as_posix()
        if path.name == "__init__.py":
            yield "init", where, len(text.splitlines()), INIT_LINES - 1
        else:
            yield "module", where, len(text.splitlines()), MODULE_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield "function", f"{where}:{node.name}", node.end_lineno - node.body[0].lineno + 1, FUNCTION_BODY
            elif isinstance(node, ast.ClassDef):
                yield "class", f"{where}:{node.name}", node.end_lineno - node.lineno + 1, CLASS_LINES


def test_the_package_keeps_the_size_rules():
    over = {(kind, where): size for kind, where, size, limit in _sizes() if size > limit}
    new = {key: size for key, size in over.items() if key not in KNOWN_OVER}
    grown = {key: (KNOWN_OVER[key], size) for key, size in over.items() if key in KNOWN_OVER and size > KNOWN_OVER[key]}
    kept = sorted(key for key in KNOWN_OVER if key not in over)
    assert new == {}, f"over issue 29's size rules (module {MODULE_LINES} lines, function body {FUNCTION_BODY}, " \
                      f"class {CLASS_LINES}, __init__.py under {INIT_LINES}): {new}"
    assert grown == {}, f"grew while over the size rules (was, now): {grown}"
    assert kept == [], f"within the size rules now: remove from KNOWN_OVER: {kept}"


def test_the_size_rules_are_measured_as_stated(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text('"""doc"""\n' * 40)
    (tmp_path / "sub" / "ok.py").write_text("def f(\n    a,\n):\n" + "    a += 1\n" * 60 + "\n\nclass C:\n"
                                           + "    x = 1\n" * 249)
    (tmp_path / "big.py").write_text("def g():\n" + "    pass\n" * 61 + "class D:\n" + "    y = 2\n" * 250
                                     + "\n" * 88)
    over = {(kind, where): size for kind, where, size, limit in _sizes(tmp_path) if size > limit}
    assert over == {("init", "sub/__init__.py"): 40, ("function", "big.py:g"): 61, ("class", "big.py:D"): 251,
                    ("module", "big.py"): 401}
