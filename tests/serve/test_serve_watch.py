"""`charrnn serve --watch`: a training run that replaces the checkpoint is picked up between steps, /v1/models
shows the new step, and a stream in flight goes on."""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import run_cli
from servers import LONG, Server, Stream

pytest.importorskip("starlette")


def test_watch_reloads_what_training_writes(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    corpus = shutil.copy(tiny_run.parent / "corpus.txt", tmp_path / "corpus.txt")
    s = Server(run, "--port", 0, "--watch", "--max-chars", LONG)
    try:
        assert s.request("GET", "/v1/models")[1]["data"][0]["step"] == 40
        stream = Stream(s.url, {"prompt": "a", "max_tokens": LONG, "seed": 3}, headers={})
        trained = run_cli("train", corpus, "--resume", run, "--max-steps", 60, "--quiet", timeout=600)
        assert trained.returncode == 0, trained.stderr.decode()
        s.wait_line(r"reloaded run \(step 60\)")
        deadline = time.monotonic() + 60
        while s.request("GET", "/v1/models")[1]["data"][0]["step"] != 60:
            assert time.monotonic() < deadline, "/v1/models never showed step 60"
            time.sleep(0.1)
        assert s.request("GET", "/health")[1]["step"] == 60
        assert s.metric("charrnn_model_step") == 60
        for _ in range(3):  # the stream opened before the reload still gets characters
            line = stream.response.readline()
            while line in (b"\n", b"\r\n"):
                line = stream.response.readline()
            assert line.startswith(b"data: {"), line
        stream.close()
        status, body = s.request("POST", "/v1/completions", body={"prompt": "a", "max_tokens": 20, "seed": 1})
        assert status == 200 and len(body["choices"][0]["text"]) == 20
    finally:
        assert s.stop() == 0
