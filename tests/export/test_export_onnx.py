"""`charrnn export --format onnx` (charrnn/export/onnx_model.py): valid graphs with the agreed I/O names, logits within
1e-4 of torch over 2,000 teacher-forced characters and greedy text equal to charrnn's for 500, at batch 1 and 16,
for every cell; a model that fails the export-time check writes nothing; the docs' onnxruntime example runs
without torch or charrnn."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env
from export_runs import CELLS, doc_block, trained_run

import onnx  # the export extra, part of the test install
import onnxruntime as ort

CHARS = 2000
_GREEDY: dict = {}  # (run, prime) -> charrnn.sample's greedy text


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch on one thread here: these tests step tiny models a character at a time, where a second thread only
    adds synchronisation (many times slower on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("export_onnx")


@pytest.fixture(scope="module", params=CELLS)
def exported(request, base):
    """(run directory, ONNX directory, corpus text) for each cell, exported in-process."""
    from charrnn.export.command import export_model

    run = trained_run(request.param, base)
    out = base / f"onnx-{request.param}"
    written = export_model(str(run), "onnx", str(out))
    assert sorted(os.path.basename(p) for p in written) == ["prefill.onnx", "step.onnx"]
    text = (run.parent / f"corpus-{request.param}.txt").read_text(encoding="utf-8")  # the run may be cached
    return run, out, text


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _state_names(cell):
    return ["h", "c"] if cell == "lstm" else ["h"]


def _zero(model, batch):
    state = model.init_state(batch).numpy()
    return {"h": state[0], "c": state[1]} if model.config.cell == "lstm" else {"h": state}


def _torch_state(cell, outs):
    return np.stack(outs) if cell == "lstm" else outs[0]


def test_graphs_are_valid_and_described(exported):
    import json

    from charrnn.model.runtime import load_model

    run, out, _ = exported
    ckpt, model, vocab = load_model(str(run))
    cell, L, H, V = model.config.cell, model.config.num_layers, model.config.hidden_size, len(vocab)
    for name in ("step.onnx", "prefill.onnx"):
        proto = onnx.load(str(out / name))
        onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert "".join(json.loads(meta["charrnn.vocab"])) == vocab.chars
        assert json.loads(meta["charrnn.model_config"]) == ckpt["model_config"]
        assert meta["charrnn.graph"] == name[:-5]
        sess = _session(out / name)
        assert [i.name for i in sess.get_inputs()] == ["ids", *_state_names(cell)]
        assert [o.name for o in sess.get_outputs()] == ["logits", *(s + "_out" for s in _state_names(cell))]
        ids_shape = sess.get_inputs()[0].shape
        assert ids_shape == (["batch"] if name == "step.onnx" else ["batch", "time"])
        assert sess.get_inputs()[1].shape == [L, "batch", H]
        assert sess.get_outputs()[0].shape[-1] == V
    # layer 0's input product is a row lookup: the first node that reads the ids is a Gather in a [V, *] table
    step = onnx.load(str(out / "step.onnx"))
    first = next(node for node in step.graph.node if "ids" in node.input)
    tables = {init.name: list(init.dims) for init in step.graph.initializer}
    assert first.op_type == "Gather" and tables[first.input[0]][0] == V


@pytest.mark.parametrize("batch", [1, 16])
def test_teacher_forced_logits_match_torch(exported, batch):
    import torch

    from charrnn.model.runtime import load_model

    run, out, text = exported
    _, model, vocab = load_model(str(run))
    cell = model.config.cell
    # `batch` different windows of the corpus, CHARS characters each
    ids = np.stack([vocab.encode(text[k * 350 : k * 350 + CHARS]) for k in range(batch)]).astype(np.int64)
    with torch.no_grad():
        want, _, want_state = model(torch.from_numpy(ids), model.init_state(batch))
    want, want_state = want.numpy(), want_state.numpy()

    prefill = _session(out / "prefill.onnx")
    # in two pieces, the state carried from the first to the second
    first = prefill.run(None, {"ids": ids[:, :1200], **_zero(model, batch)})
    carried = dict(zip(_state_names(cell), first[1:]))
    second = prefill.run(None, {"ids": ids[:, 1200:], **carried})
    logits = np.concatenate([first[0], second[0]], axis=1)
    assert logits.shape == want.shape == (batch, CHARS, len(vocab))
    assert np.abs(logits - want).max() < 1e-4
    assert np.abs(_torch_state(cell, second[1:]) - want_state).max() < 1e-4

    step = _session(out / "step.onnx")
    state, worst = _zero(model, batch), 0.0
    for t in range(CHARS):
        outs = step.run(None, {"ids": ids[:, t], **state})
        worst = max(worst, float(np.abs(outs[0] - want[:, t]).max()))
        state = dict(zip(_state_names(cell), outs[1:]))
    assert worst < 1e-4


@pytest.mark.parametrize("batch", [1, 16])
def test_greedy_text_matches_charrnn(exported, batch):
    import charrnn

    from charrnn.model.runtime import load_model

    run, out, _ = exported
    _, model, vocab = load_model(str(run))
    cell = model.config.cell
    primes = ["The ", "A quick", "Birds", "Then the", "And "] * 4
    primes = primes[:batch]
    # charrnn's own greedy text (top-k 1) for each prime
    for p in set(primes):  # each computed once per run (the batch-1 prime is one of the batch-16 ones)
        if (run, p) not in _GREEDY:
            _GREEDY[run, p] = charrnn.sample(str(run), length=500, top_k=1, prime=p, seed=0)[0]
    expected = [_GREEDY[run, p] for p in primes]
    prefill, step = _session(out / "prefill.onnx"), _session(out / "step.onnx")
    texts = []
    for prime in sorted(set(primes), key=primes.index):  # prefill per prime length, then step all streams together
        outs = prefill.run(None, {"ids": np.array([vocab.encode(prime)], np.int64), **_zero(model, 1)})
        texts.append((prime, outs))
    by_prime = dict(texts)
    logits = np.concatenate([by_prime[p][0][:, -1] for p in primes])
    state = {name: np.concatenate([by_prime[p][1 + i] for p in primes], axis=1)
             for i, name in enumerate(_state_names(cell))}
    generated = [[] for _ in primes]
    for _ in range(500):
        nxt = logits.argmax(-1).astype(np.int64)
        for row, i in enumerate(nxt):
            generated[row].append(vocab.chars[int(i)])
        outs = step.run(None, {"ids": nxt, **state})
        logits, state = outs[0], dict(zip(_state_names(cell), outs[1:]))
    got = [p + "".join(g) for p, g in zip(primes, generated)]
    assert got == expected


def test_a_failed_check_is_an_error_and_writes_nothing(base, monkeypatch):
    from charrnn.export import onnx_model
    from charrnn.export.command import export_model

    run = trained_run("gru", base)
    real = onnx_model._weights

    def off_by_a_little(model):  # what an equation out of step with torch's would do: logits off by 1e-3
        weights = real(model)
        weights["head.bias"] = weights["head.bias"] + np.float32(1e-3)
        return weights

    monkeypatch.setattr(onnx_model, "_weights", off_by_a_little)
    out = base / "never-written"
    before = sorted(os.listdir(base))
    with pytest.raises(onnx_model.ExportCheckError) as caught:
        export_model(str(run), "onnx", str(out))
    assert caught.value.exit_code == 1
    assert "differ from torch's" in caught.value.message and "nothing was written" in caught.value.message
    assert not out.exists() and sorted(os.listdir(base)) == before


def test_the_docs_onnxruntime_example_runs_without_torch_or_charrnn(exported, tmp_path):
    import shutil

    run, out, _ = exported
    shutil.copytree(out, tmp_path / "model-onnx")
    # torch and charrnn cannot be imported at all here
    code = "import sys\nsys.modules['torch'] = sys.modules['charrnn'] = None\n" + doc_block("onnxruntime as ort")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode("utf-8")[:-1]  # print's newline
    assert text.startswith("The ") and len(text) == 204

    from charrnn.store.checkpoint import load_checkpoint

    vocab = load_checkpoint(str(run / "latest.pt"))["vocab"]
    assert set(text) <= set(vocab)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 3])
def test_other_depths_and_a_model_without_its_corpus(cell, layers):
    """One and three layers (untrained weights, in-process), and the check's fallback text: a model whose corpus
    cannot be read is checked on 2,001 characters it generates itself."""
    import dataclasses

    import torch

    from charrnn.config import ModelConfig
    from charrnn.data.vocab import Vocab
    from charrnn.export import onnx_model
    from charrnn.model.network import CharRNN

    vocab = Vocab("abc \nxyzé")
    config = ModelConfig(vocab_size=len(vocab), hidden_size=16, num_layers=layers, cell=cell)
    torch.manual_seed(layers)
    model = CharRNN(config).eval()
    ckpt = {"vocab": vocab.chars, "model_config": dataclasses.asdict(config), "corpus": {"source": "/no/such.txt"}}
    files, report = onnx_model.export_onnx(ckpt, model, vocab)
    assert sorted(files) == ["prefill.onnx", "step.onnx"]
    assert report["chars"] == 2000 and report["greedy_chars"] == 500
    assert max(report["prefill_max_diff"], report["step_max_diff"]) < 1e-4
    sess = ort.InferenceSession(files["step.onnx"], providers=["CPUExecutionProvider"])
    state = model.init_state(3).numpy()
    feed = {"ids": np.array([0, 1, 2], np.int64)}
    feed.update({"h": state[0], "c": state[1]} if cell == "lstm" else {"h": state})
    logits = sess.run(None, feed)[0]
    with torch.no_grad():
        want, _ = model.step(torch.tensor([0, 1, 2]), model.init_state(3))
    assert np.abs(logits - want.numpy()).max() < 1e-5
