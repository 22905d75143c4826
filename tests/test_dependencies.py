"""Every module the package imports is in the standard library or declared in pyproject.toml.

An undeclared one works on the developer's machine (something else installed it) and fails for a user with
ModuleNotFoundError (cli/commands.py once imported typing_extensions this way)."""

from __future__ import annotations

import ast
import re
import sys

from conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# where a distribution's import name differs from its name on PyPI
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = {re.match(r"[A-Za-z0-9._-]+", r.strip()).group(0).lower().replace("_", "-") for r in requirements}
    return {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}


def _imported() -> dict[str, set[str]]:
    """Top-level module -> the package files that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "charrnn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], set()).add(path.name)
    return found


def test_every_import_is_stdlib_or_declared():
    allowed = set(sys.stdlib_module_names) | _declared() | {"charrnn"}
    undeclared = {m: sorted(files) for m, files in _imported().items() if m not in allowed}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
