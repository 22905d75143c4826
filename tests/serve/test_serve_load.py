"""A bounded load test on loopback: 64 streaming clients at once against 16 rows and a queue, no errors, and every
client's text the same bytes as its request run alone (nothing lost, nothing duplicated, nothing mixed up)."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from servers import Server, completion_events

pytest.importorskip("starlette")

CLIENTS = 64


def _ask(i: int) -> dict:
    return {"prompt": ["", "The ", "a dog ", "Then "][i % 4], "max_tokens": 40 + (i % 7) * 15, "seed": 1000 + i,
            "temperature": [1.0, 0.7, 0.0, 1.3][i % 4], "top_k": [None, 5, None, 10][i % 4],
            "logprobs": 1 if i % 5 == 0 else None}


def _post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status, r.read().decode("utf-8")


def test_64_streaming_clients_get_what_each_gets_alone(tiny_run):
    s = Server(tiny_run, "--port", 0, "--max-streams", 16, "--max-queue", CLIENTS)
    try:
        before = s.metric("charrnn_characters_generated_total")
        results, errors = {}, []
        start = threading.Barrier(CLIENTS)

        def client(i):
            try:
                start.wait(60)
                status, raw = _post(s.url, {**_ask(i), "stream": True})
                events = completion_events(raw)
                assert status == 200
                results[i] = ("".join(e["choices"][0]["text"] for e in events), events[-1]["choices"][0]["finish_reason"])
            except Exception as exc:  # collected: a thread's assertion would otherwise be lost
                errors.append((i, repr(exc)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not any(t.is_alive() for t in threads), "clients still running after 10 minutes"
        assert errors == []
        assert len(results) == CLIENTS
        streamed_chars = sum(len(text) for text, _ in results.values())
        alone_chars = 0
        for i in range(CLIENTS):
            status, raw = _post(s.url, _ask(i))
            body = json.loads(raw)
            alone = body["choices"][0]["text"]
            alone_chars += len(alone)
            assert results[i][0].encode() == alone.encode(), i
            assert results[i][1] == "length" and len(alone) == _ask(i)["max_tokens"]
        assert s.metric("charrnn_characters_generated_total") - before == streamed_chars + alone_chars
        assert s.metric("charrnn_active_streams") == 0 and s.metric("charrnn_queue_depth") == 0
    finally:
        assert s.stop() == 0
