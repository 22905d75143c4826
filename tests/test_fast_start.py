"""`charrnn --help` and `charrnn sample --help` never import torch (it costs seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli_env

PROBE = """
import sys
import charrnn.cli
try:
    charrnn.cli.app(args=sys.argv[1:], prog_name="charrnn")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


@pytest.mark.parametrize("args", [["--help"], ["sample", "--help"], ["train", "--help"], ["eval", "--help"]])
def test_help_does_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok") and "Usage" in proc.stdout
