"""`charrnn export` on the command line: what it writes and says, its user errors (one line, exit 2 unless noted),
atomic output, and that `import charrnn` / `--help` import none of the export extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import assert_one_line_error, cli_env, run_cli
from export_runs import trained_run

EXTRA = ("onnx", "onnxruntime", "safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run("tanh", tmp_path_factory.mktemp("export_cli"))


def test_onnx_export_writes_two_models_and_refuses_to_overwrite(run, tmp_path):
    out = tmp_path / "m-onnx"
    proc = run_cli("export", run, "--format", "onnx", "-o", out, check=0)
    err = proc.stderr.decode()
    assert proc.stdout == b""
    assert "checked with onnxruntime" in err and f"wrote {out / 'step.onnx'}" in err
    assert sorted(p.name for p in out.iterdir()) == ["prefill.onnx", "step.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["m-onnx"]  # no temp directory left beside it
    before = (out / "step.onnx").read_bytes()
    assert_one_line_error(run_cli("export", run, "-f", "onnx", "-o", out), 2, "exists", "--force")
    (out / "step.onnx").write_bytes(b"stale")
    run_cli("export", run, "-f", "onnx", "-o", out, "--force", check=0)
    assert (out / "step.onnx").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["prefill.onnx", "step.onnx"]


def test_web_export_refuses_to_overwrite_and_replaces_whole_with_force(run, tmp_path):
    out = tmp_path / "site"
    run_cli("export", run, "--format", "web", "-o", out, check=0)
    files = sorted(p.name for p in out.iterdir())
    assert "index.html" in files and "charrnn.js" in files and "model.json" in files
    model_json = (out / "model.json").read_bytes()
    assert_one_line_error(run_cli("export", run, "-f", "web", "-o", out), 2, "exists", "--force")
    (out / "model.json").write_bytes(b"stale")
    (out / "left-over.txt").write_text("from before")
    proc = run_cli("export", run, "-f", "web", "-o", out, "--force", check=0)
    assert f"wrote {out / 'model.json'}" in proc.stderr.decode()
    assert (out / "model.json").read_bytes() == model_json
    assert sorted(p.name for p in out.iterdir()) == files  # the old folder was replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no temp folder left beside it


def test_user_errors_are_one_line_and_leave_nothing(run, tmp_path):
    out = tmp_path / "m.safetensors"
    assert_one_line_error(run_cli("export", run, "--format", "tflite", "-o", out), 2, "unknown format", "onnx")
    corpus = run.parent / "corpus-tanh.txt"
    assert_one_line_error(run_cli("export", corpus, "--format", "safetensors", "-o", out), 2,
                          "not a charrnn checkpoint")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"mine")
    assert_one_line_error(run_cli("export", run, "--format", "safetensors", "-o", out), 2, "exists", "--force")
    assert out.read_bytes() == b"mine"
    assert_one_line_error(run_cli("export", run, "-f", "onnx", "-o", out, "--force"), 2, "is a file")
    assert_one_line_error(run_cli("export", run, "-f", "safetensors", "-o", tmp_path / "no" / "m.safetensors"),
                          73, "cannot write")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"] and out.read_bytes() == b"mine"


def test_a_missing_extra_names_it(run, tmp_path):
    code = ("import sys\n"
            "sys.modules['onnx'] = None\n"  # as if the export extra were not installed
            "from charrnn.cli.commands import main\n"
            f"sys.argv = ['charrnn', 'export', {str(run)!r}, '--format', 'onnx', '-o', {str(tmp_path / 'x')!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, timeout=120)
    assert_one_line_error(proc, 2, 'pip install "charrnn[export]"')
    assert list(tmp_path.iterdir()) == []


def test_import_and_help_load_no_export_extra():
    probe = ("import sys\n"
             "import charrnn, charrnn.cli.commands\n"
             "try:\n"
             "    charrnn.cli.commands.app(args=['export', '--help'], prog_name='charrnn')\n"
             "except SystemExit as exc:\n"
             "    assert exc.code in (0, None), exc.code\n"
             f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {EXTRA!r} + ('torch', 'numpy')\n"
             "                or m.startswith('charrnn.export') or m == 'charrnn.store.modelfile')\n"
             "assert not loaded, loaded\n"
             "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok") and "--format" in proc.stdout
