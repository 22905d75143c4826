"""`charrnn --help` and the commands' --help never import torch (it costs seconds), numpy, numba or the training
code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli_env, hang_guard

PROBE = """
import sys
import charrnn.cli.commands
try:
    charrnn.cli.commands.app(args=sys.argv[1:], prog_name="charrnn")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "numba")
               or m in ("charrnn.training.launch", "charrnn.training.trainer", "charrnn.data.cache", "charrnn.model.network"))
assert not heavy, f"imported: {heavy[:5]}"
print("ok")
"""


@pytest.mark.parametrize("args", [["--help"], ["sample", "--help"], ["train", "--help"], ["eval", "--help"]])
def test_help_does_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=hang_guard(60))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok") and "Usage" in proc.stdout


def test_package_names_stay_the_api_after_their_modules_are_imported():
    """`import charrnn` is light, and charrnn.train / .sample / .evaluate are the functions even once the
    submodules of the same names have been imported (the import system records them on the package)."""
    code = ("import sys, charrnn; assert 'charrnn.training.launch' not in sys.modules and 'numpy' not in sys.modules\n"
            "import charrnn.training.launch, charrnn.inference.sampling, charrnn.inference.evaluation\n"
            "import charrnn.training.trainer\n"
            "assert callable(charrnn.train) and charrnn.train.__module__ == 'charrnn.training.launch'\n"
            "assert charrnn.sample.__name__ == 'sample' and charrnn.evaluate.__name__ == 'evaluate'\n"
            "assert charrnn.TrainResult is charrnn.training.trainer.TrainResult\n"
            "from charrnn import train, generate; assert train is charrnn.train\n"
            "import unittest.mock as mock\n"
            "with mock.patch.object(charrnn, 'evaluate', 42): assert charrnn.evaluate == 42\n"
            "assert charrnn.evaluate.__name__ == 'evaluate' and 'sample' in dir(charrnn)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True,
                          timeout=hang_guard(120))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
