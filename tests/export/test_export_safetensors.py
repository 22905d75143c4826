"""`charrnn export --format safetensors` and reading the file back everywhere a checkpoint is read
(charrnn/store/modelfile.py): the same text and numbers as from the checkpoint, no pickle, the vocabulary exact, the
docs' numpy-only snippet, and damaged or foreign files refused in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import pytest

from conftest import assert_one_line_error, make_corpus, run_cli
from export_runs import CELLS, doc_block, trained_run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("export_st")


@pytest.fixture(scope="module", params=CELLS)
def exported(request, base):
    """(run directory, its .safetensors file written by the CLI) for each cell."""
    run = trained_run(request.param, base)
    out = base / f"{request.param}.safetensors"
    proc = run_cli("export", run, "--format", "safetensors", "-o", out, check=0)
    assert proc.stdout == b""
    assert f"wrote {out}" in proc.stderr.decode()
    return run, out


@pytest.fixture(scope="module")
def tanh_file(base):
    """(run directory, .safetensors file) of the tanh run, exported in-process (for the tests about the file, not
    the cell)."""
    from charrnn.export.command import export_model

    run = trained_run("tanh", base)
    out = base / "tanh-lib.safetensors"
    assert export_model(str(run), "safetensors", str(out)) == [str(out)]
    return run, out


def _parse(path):
    """The header and data of a safetensors file, parsed by hand (the format's spec, not charrnn's reader)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def test_sample_eval_info_match_the_checkpoint(exported):
    run, out = exported
    args = ["--length", "200", "--seed", "7", "--temperature", "0.9", "--prime", "The "]
    from_ckpt = run_cli("sample", run, *args, check=0).stdout
    from_file = run_cli("sample", out, *args, check=0).stdout
    assert from_file == from_ckpt and len(from_ckpt.decode()) >= 200

    scores = [json.loads(run_cli("eval", path, "--json", check=0).stdout) for path in (run, out)]
    assert scores[0]["chars"] > 0
    for key in ("chars", "nats_per_char", "bits_per_char", "perplexity", "text"):
        assert scores[1][key] == scores[0][key], key

    infos = [json.loads(run_cli("info", path, "--json", check=0).stdout) for path in (run, out)]
    assert infos[1]["checkpoint"] == str(out)
    for key in ("architecture", "parameters", "vocab", "step", "epoch", "best_val_loss", "corpus", "precision",
                "torch_version", "train_config"):
        assert infos[1][key] == infos[0][key], key
    # the same words, less "which the checkpoint also holds to resume" (the model file does not)
    assert infos[0]["weights"].startswith(infos[1]["weights"])
    text = run_cli("info", out, check=0).stdout.decode()
    assert "parameters:" in text and str(out) in text


def test_the_file_holds_float32_tensors_and_string_metadata_only(exported):
    run, out = exported
    raw = out.read_bytes()
    assert not raw.startswith((b"PK\x03\x04", b"\x80"))  # neither torch's zip nor a pickle
    header, data = _parse(out)
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    # the tensors are float32 and cover the data exactly, back to back: there is room for nothing else
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for entry in header.values():
        assert entry["dtype"] == "F32"
        count = 1
        for dim in entry["shape"]:
            count *= dim
        assert entry["data_offsets"][1] - entry["data_offsets"][0] == 4 * count

    import torch

    from charrnn.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(run / "latest.pt"))
    assert set(header) == set(ckpt["model"])
    assert meta["format"] == "charrnn" and meta["format_version"] == "1"
    assert "".join(json.loads(meta["vocab"])) == ckpt["vocab"]
    assert json.loads(meta["model_config"]) == ckpt["model_config"]
    assert int(meta["step"]) == ckpt["progress"]["step"]
    assert float(meta["val_loss"]) == ckpt["progress"]["best_val_loss"]
    assert meta["corpus"] == ckpt["corpus"]["source"] and meta["corpus_sha256"] == ckpt["corpus"]["sha256"]
    assert meta["charrnn_version"]

    # the reference reader agrees
    from safetensors.numpy import load_file

    tensors = load_file(str(out))
    for name, tensor in ckpt["model"].items():
        assert torch.equal(torch.from_numpy(tensors[name]), tensor.float()), name


def test_the_docs_numpy_snippet_matches_torch(exported, tmp_path, monkeypatch):
    import shutil

    import numpy as np
    import torch

    from charrnn.model.runtime import load_model

    run, out = exported
    shutil.copy(out, tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "snippet"}
    exec(compile(doc_block("safe_open"), "docs/export.md", "exec"), namespace)  # the block as the docs show it

    _, model, vocab = load_model(str(run))
    text = (run.parent / f"corpus-{model.config.cell}.txt").read_text()[:300]
    ids = [vocab.index[c] for c in text]
    got, _, _ = namespace["run"](ids)
    with torch.no_grad():
        want, _, _ = model(torch.tensor([ids]))
    assert got.shape == (len(ids), len(vocab))
    assert np.abs(got - want[0].numpy()).max() < 1e-5


def test_resume_from_a_model_file_is_refused(tanh_file, tmp_path):
    run, out = tanh_file
    corpus = make_corpus(tmp_path / "c.txt")
    before = sorted(os.listdir(out.parent))
    proc = run_cli("train", corpus, "--resume", out, "--max-steps", "30")
    assert_one_line_error(proc, 2, "cannot resume", "optimizer")
    assert sorted(os.listdir(out.parent)) == before


def test_every_character_survives(tmp_path):
    """Newlines, tabs, carriage returns, non-ASCII, astral characters and lone surrogates (what --errors
    surrogateescape makes of bad bytes) come back exactly."""
    import torch

    from charrnn.config import ModelConfig
    from charrnn.store.modelfile import metadata_for, model_file_bytes, read_model_file
    from charrnn.model.network import CharRNN

    chars = "".join(sorted("\n\t\r \"\\é中😀\udc80\x00\u2028"))
    config = ModelConfig(vocab_size=len(chars), hidden_size=8, num_layers=1, cell="tanh")
    model = CharRNN(config)
    ckpt = {"vocab": chars, "model_config": dataclasses.asdict(config), "progress": {"step": 3, "best_val_loss": 1.5},
            "corpus": {"source": "weird ☃.txt", "sha256": "ab", "chars": 10}}
    raw = model_file_bytes(model.state_dict(), metadata_for(ckpt))
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw)
    back = read_model_file(raw, str(path))
    assert back["vocab"] == chars
    assert back["corpus"]["source"] == "weird ☃.txt"
    assert back["progress"]["step"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(back["model"][name], tensor)

    from safetensors import safe_open  # the reference reader takes the file too

    with safe_open(str(path), "np") as f:
        assert "".join(json.loads(f.metadata()["vocab"])) == chars


def test_damaged_and_foreign_files_are_one_line_errors(tanh_file, tmp_path):
    run, out = tanh_file
    raw = out.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) - 7])
    assert_one_line_error(run_cli("sample", cut, "-n", "5"), 65, "incomplete or corrupt")
    header_len = struct.unpack("<Q", raw[:8])[0]
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(raw[:8] + b"{" + b"\x00" * (header_len - 1) + raw[8 + header_len :])
    assert_one_line_error(run_cli("info", garbled), 65, "incomplete or corrupt")

    import numpy as np
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(foreign), metadata={"format": "pt"})
    assert_one_line_error(run_cli("sample", foreign, "-n", "5"), 65, "not a charrnn model")
    assert_one_line_error(run_cli("eval", foreign), 65, "not a charrnn model")


def test_reading_a_model_file_needs_no_extra(tanh_file):
    """`sample` reads the file with the package's own reader: onnx, onnxruntime and safetensors stay unimported
    (here: unimportable), and charrnn.export is not loaded."""
    import subprocess
    import sys

    from conftest import cli_env

    run, out = tanh_file
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'safetensors'): sys.modules[m] = None\n"
            "from charrnn.cli.commands import app\n"
            "try:\n"
            f"    app(args=['sample', {str(out)!r}, '-n', '20', '--seed', '1'], prog_name='charrnn')\n"
            "except SystemExit as exc:\n"
            "    assert exc.code in (0, None), exc.code\n"
            "assert 'charrnn.export' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == run_cli("sample", run, "-n", "20", "--seed", "1", check=0).stdout


def test_a_model_file_exports_again_to_the_same_bytes(tanh_file, tmp_path):
    """A .safetensors file is an input like a checkpoint: exported again it gives the same file, byte for byte
    (every piece of its metadata survives the round trip)."""
    from charrnn.export.command import export_model

    run, out = tanh_file
    again = tmp_path / "again.safetensors"
    export_model(str(out), "safetensors", str(again))
    assert again.read_bytes() == out.read_bytes()
