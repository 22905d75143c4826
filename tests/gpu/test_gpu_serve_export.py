"""After training on a GPU (pytest marker `gpu`): `charrnn serve --device cuda` for each cell, and the export of a
GPU-trained model. Skipped with a reason where CUDA (or the serve / export extra) is absent, never failed for it.

- serve on CUDA: the start-up line names the device; a seeded request gives the same bytes alone, streamed, and
  beside 15 other streams (the padded batch: every step runs all rows); logprobs; SIGTERM with streams in flight
  exits 0.
- export: a model trained on the GPU exports to ONNX (export's own onnxruntime check passes), to safetensors
  (`sample` of the file equals `sample` of the run, seeded) and to a web folder.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import make_corpus, run_cli  # noqa: E402
from servers import LONG, Server, Stream, completion_events  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine: "
                                                            "python benchmarks/gpu.py)"),
]

CELLS = ["tanh", "gru", "lstm"]


@pytest.fixture(scope="module", params=CELLS)
def gpu_run(request, tmp_path_factory):
    """A 2x64 model of `cell` trained 30 steps on the GPU (the default precision for it)."""
    import charrnn

    base = tmp_path_factory.mktemp(f"gpu-{request.param}")
    corpus = make_corpus(base / "c.txt", 20000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=64, num_layers=2, cell=request.param),
                           charrnn.TrainConfig(batch_size=16, seq_len=32, warmup_steps=5, eval_every=30,
                                               max_steps=30, device="cuda"),
                           run_dir=str(base / "run"), progress=False)
    return result.run_dir


def complete(server: Server, **body) -> dict:
    status, payload = server.request("POST", "/v1/completions", {"model": "run", **body})
    assert status == 200, payload
    return payload


def test_serve_on_cuda_is_the_same_alone_and_beside_15_streams(gpu_run):
    pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
    server = Server(gpu_run, "--device", "cuda", "--port", 0, "--max-chars", LONG, "--max-streams", 32)
    try:
        assert any("cuda" in line and "serving" in line for line in server.stderr), server.stderr
        status, models = server.request("GET", "/v1/models")
        assert status == 200 and models["data"][0]["step"] == 30, models
        ask = dict(prompt="The dog ", max_tokens=300, seed=1234, temperature=0.9, top_p=0.95)
        alone = complete(server, **ask)["choices"][0]["text"]
        assert len(alone) == 300
        others = []
        try:
            for i in range(15):  # different prompts and options, all running when the seeded request comes
                others.append(Stream(server.url, {"prompt": "a " * (i % 4), "max_tokens": LONG, "seed": i,
                                                  "temperature": 0.5 + i / 10, "top_k": (i % 5) or None}, headers={}))
            assert server.metric("charrnn_active_streams") >= 15
            beside = complete(server, **ask)["choices"][0]["text"]
            streamed = Stream(server.url, ask, headers={})
            pieces = "".join(e["choices"][0]["text"] for e in completion_events(streamed.rest()))
            assert server.metric("charrnn_active_streams") >= 15
        finally:
            for s in others:
                s.close()
        assert beside.encode("utf-8") == alone.encode("utf-8")
        assert pieces.encode("utf-8") == alone.encode("utf-8")

        scored = complete(server, prompt="the ", max_tokens=40, seed=2, logprobs=2)["choices"][0]
        lp = scored["logprobs"]
        assert len(lp["token_logprobs"]) == 40 and all(v <= 0.0 for v in lp["token_logprobs"])
        assert all(len(top) == 2 for top in lp["top_logprobs"])

        in_flight = [Stream(server.url, {"prompt": "a ", "max_tokens": LONG, "seed": i}, headers={}) for i in range(4)]
        assert server.stop() == 0, server.stderr
        for s in in_flight:
            assert completion_events(s.rest())  # each ended cleanly, with data: [DONE]
    finally:
        server.stop()


def test_a_gpu_trained_model_exports(gpu_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install -e '.[export]')")
    pytest.importorskip("safetensors", reason="the export extra is not installed (pip install -e '.[export]')")
    proc = run_cli("export", gpu_run, "--format", "onnx", "-o", tmp_path / "onnx", check=0)
    assert "checked with onnxruntime" in proc.stderr.decode()

    model_file = tmp_path / "m.safetensors"
    run_cli("export", gpu_run, "--format", "safetensors", "-o", model_file, check=0)
    from_run = run_cli("sample", gpu_run, "-n", 200, "--seed", 3, "--prime", "The ", check=0).stdout
    from_file = run_cli("sample", model_file, "-n", 200, "--seed", 3, "--prime", "The ", check=0).stdout
    assert from_file == from_run and len(from_run.decode()) >= 200

    run_cli("export", gpu_run, "--format", "web", "-o", tmp_path / "site", check=0)
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    assert meta, "model.json is empty"
