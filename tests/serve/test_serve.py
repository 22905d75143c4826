"""`charrnn serve` through the real process: the official openai client, curl, every error status, seeded batch
invariance beside 15 other streams, a client leaving, 429 beyond the queue, SIGTERM with streams in flight."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from urllib.parse import urlparse

import pytest

from conftest import ROOT, assert_one_line_error, cli_env, run_cli
from servers import AUTH, KEY, LONG, Server, Stream, completion_events

openai = pytest.importorskip("openai")



@pytest.fixture(scope="module")
def server(tiny_run):
    s = Server(tiny_run, "--port", 0, "--api-key", KEY, "--max-chars", LONG)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def whole(client, **kw) -> str:
    return client.completions.create(model="run", **kw).choices[0].text


# --------------------------------------------------------------------------------------------- the openai client
def test_completion_shape_and_usage(client, tiny_run):
    r = client.completions.create(model="anything", prompt="The ", max_tokens=50, seed=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "run"
    (choice,) = r.choices
    assert len(choice.text) == 50 and choice.finish_reason == "length" and choice.index == 0
    assert choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 50, 54)
    vocab = set(json.loads((tiny_run / "vocab.json").read_text())) if (tiny_run / "vocab.json").exists() else None
    if vocab:
        assert set(choice.text) <= vocab


def test_streaming_gives_the_same_text_in_pieces(client):
    text = whole(client, prompt="A ", max_tokens=120, seed=11)
    pieces, reasons = [], []
    for chunk in client.completions.create(model="run", prompt="A ", max_tokens=120, seed=11, stream=True):
        assert chunk.object == "text_completion"
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == text
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])


def test_seed_reproduces_and_n_gives_choices(client):
    a = client.completions.create(model="run", prompt="the ", max_tokens=60, seed=5, n=3)
    b = client.completions.create(model="run", prompt="the ", max_tokens=60, seed=5, n=3)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) == 3  # each choice its own generator
    assert a.choices[1].text == whole(client, prompt="the ", max_tokens=60, seed=6)  # choice i draws from seed + i
    assert a.usage.completion_tokens == 180 and a.usage.prompt_tokens == 4
    assert whole(client, prompt="the ", max_tokens=60, seed=7) != a.choices[0].text


def test_prompt_list_and_echo(client):
    r = client.completions.create(model="run", prompt=["a ", "the "], max_tokens=20, seed=1, echo=True, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text.startswith("a ") and r.choices[2].text.startswith("the ")
    assert r.choices[2].text[4:] == whole(client, prompt="the ", max_tokens=20, seed=3)  # index 2: seed 1 + 2


def test_stop_sequence_ends_the_text_before_it(client):
    free = whole(client, prompt="The ", max_tokens=200, seed=21)
    stop = free[30:32]
    cut = free.find(stop)
    r = client.completions.create(model="run", prompt="The ", max_tokens=200, seed=21, stop=[stop, "\x00" * 0 + stop])
    assert r.choices[0].text == free[:cut] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="run", prompt="The ", max_tokens=200, seed=21, stop=stop, stream=True))
    assert streamed == free[:cut]


def test_logprobs(client):
    r = client.completions.create(model="run", prompt="The ", max_tokens=30, seed=2, logprobs=3)
    c = r.choices[0]
    lp = c.logprobs
    assert lp.tokens == list(c.text)
    assert lp.text_offset == list(range(30))
    assert len(lp.token_logprobs) == 30 and all(x <= 0 for x in lp.token_logprobs)
    for chosen, token, top in zip(lp.token_logprobs, lp.tokens, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) >= chosen - 1e-12
        if token in top:
            assert top[token] == pytest.approx(chosen)
    assert c.text == whole(client, prompt="The ", max_tokens=30, seed=2)  # asking for logprobs changes nothing


def test_temperature_zero_is_greedy(client):
    a = whole(client, prompt="The ", max_tokens=40, temperature=0)
    assert a == whole(client, prompt="The ", max_tokens=40, temperature=0, seed=99)


def test_errors_are_the_clients_exception_types(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="run", prompt="Zé~", max_tokens=5)
    assert "'Z'" in e.value.message and "'é'" in e.value.message and "vocabulary" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="run", prompt="a", max_tokens=LONG + 1)
    assert "max_tokens" in e.value.message
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="run", prompt="a", max_tokens=5)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert client.models.retrieve("run").id == "run"


# --------------------------------------------------------------------------------------------- raw HTTP and curl
def test_models_health_and_metrics(server):
    status, body = server.request("GET", "/v1/models", headers=AUTH)
    assert status == 200 and body["object"] == "list"
    (m,) = body["data"]
    assert m["id"] == "run" and m["object"] == "model" and m["step"] == 40 and m["cell"] == "tanh"
    assert m["vocab_size"] > 10 and m["best_val_loss"] > 0
    assert server.request("GET", "/health") == (200, {"status": "ok", "model": "run", "step": 40})  # no key needed
    status, text = server.request("GET", "/metrics", headers=AUTH)
    for name in ("charrnn_requests_total", "charrnn_characters_generated_total", "charrnn_active_streams",
                 "charrnn_queue_depth", "charrnn_time_to_first_character_seconds_bucket",
                 "charrnn_request_duration_seconds_bucket", "charrnn_model_step"):
        assert name in text, name


@pytest.mark.parametrize("raw,param,needle", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (json.dumps({"prompt": 5}).encode(), "prompt", "prompt"),
    (json.dumps({"prompt": "a", "max_tokens": "ten"}).encode(), "max_tokens", "integer"),
    (json.dumps({"prompt": "a", "max_tokens": -1}).encode(), "max_tokens", "between"),
    (json.dumps({"prompt": "a", "temperature": "hot"}).encode(), "temperature", "number"),
    (json.dumps({"prompt": "a", "temperature": 11}).encode(), "temperature", "between"),
    (json.dumps({"prompt": "a", "top_p": 0}).encode(), "top_p", "above 0"),
    (json.dumps({"prompt": "a", "stream": "yes"}).encode(), "stream", "boolean"),
    (json.dumps({"prompt": "a", "n": 0}).encode(), "n", "between"),
    (json.dumps({"prompt": "a", "stop": ["", "x"]}).encode(), "stop", "stop"),
    (json.dumps({"prompt": "a", "seed": 2**64}).encode(), "seed", "64-bit"),
    (json.dumps({"prompt": "a", "logprobs": 99}).encode(), "logprobs", "between"),
    (json.dumps({"prompt": "a", "frequency_penalty": 0.5}).encode(), "frequency_penalty", "not supported"),
    (json.dumps({"prompt": "a\u0001"}).encode(), "prompt", "'\\x01'"),
    (json.dumps({"prompt": "a", "max_tokens": LONG + 1}).encode(), "max_tokens", "--max-chars"),
])
def test_bad_requests_are_400_naming_the_field(server, raw, param, needle):
    status, body = server.request("POST", "/v1/completions", raw=raw, headers=AUTH)
    assert status == 400, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and needle in err["message"], err


def _too_large(url: str, announced: bool):
    """(status, JSON) of a body over 1 MB; the server may answer before it is all sent, so a raw socket reads the
    answer whenever it comes."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=120) as sock:
        size = "Content-Length: 2000000" if announced else "Transfer-Encoding: chunked"
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {KEY}\r\n{size}\r\nConnection: close\r\n\r\n".encode())
        try:
            piece = b'{"prompt": "' + b"a" * 65536
            for _ in range(20):  # 1.3 MB in all
                sock.sendall(piece if announced else b"%x\r\n%s\r\n" % (len(piece), piece))
                piece = b"a" * 65536
        except OSError:  # the server answered and closed while the body was still coming
            pass
        answer = b""
        while True:
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            answer += more
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        rest = rest.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(rest)


def test_other_statuses(server):
    for announced in (True, False):  # a Content-Length over 1 MB, or a chunked body that grows past it
        status, body = _too_large(server.url, announced)
        assert status == 413 and body["error"]["code"] == "request_too_large", body
    status, body = server.request("POST", "/v1/completions", body={"prompt": "a"})
    assert status == 401 and "API key" in body["error"]["message"]
    status, body = server.request("POST", "/v1/completions", body={"prompt": "a"}, headers={"Authorization": "Bearer x"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert server.request("GET", "/metrics")[0] == 401
    status, body = server.request("GET", "/v2/nothing", headers=AUTH)
    assert status == 404 and "error" in body
    status, body = server.request("GET", "/v1/completions", headers=AUTH)
    assert status == 405 and "error" in body


def test_curl_streams(server, client):
    body = json.dumps({"model": "run", "prompt": "The ", "max_tokens": 80, "seed": 4, "stream": True})
    proc = subprocess.run(["curl", "-N", "-sS", "--max-time", "120", "-H", "Content-Type: application/json",
                           "-H", f"Authorization: Bearer {KEY}", "-d", body, server.url + "/v1/completions"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=150)
    assert proc.returncode == 0, proc.stderr
    events = completion_events(proc.stdout.decode("utf-8"))
    assert "".join(e["choices"][0]["text"] for e in events) == whole(client, prompt="The ", max_tokens=80, seed=4)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


# --------------------------------------------------------------------------------------------- batching
def test_same_seed_same_text_alone_and_beside_15_streams(server, client):
    ask = dict(prompt="The dog ", max_tokens=300, seed=1234, temperature=0.9, top_p=0.95)
    alone = whole(client, **ask)
    others = []
    try:
        for i in range(15):  # different prompts, options and lengths; all running when the seeded request comes
            others.append(Stream(server.url, {"prompt": "a " * (i % 4), "max_tokens": LONG, "seed": i,
                                              "temperature": 0.5 + i / 10, "top_k": (i % 5) or None}))
        assert server.metric("charrnn_active_streams", AUTH) >= 15
        beside = whole(client, **ask)
        streamed = "".join(c.choices[0].text for c in client.completions.create(model="run", stream=True, **ask))
        assert server.metric("charrnn_active_streams", AUTH) >= 15  # the 15 were running all along
    finally:
        for s in others:
            s.close()
    assert beside.encode("utf-8") == alone.encode("utf-8")
    assert streamed.encode("utf-8") == alone.encode("utf-8")


def test_a_client_that_leaves_is_dropped(server):
    import time

    s = Stream(server.url, {"prompt": "a ", "max_tokens": LONG, "seed": 1})
    assert server.metric("charrnn_active_streams", AUTH) >= 1
    s.close()
    deadline = time.monotonic() + 60
    while server.metric("charrnn_active_streams", AUTH) != 0:
        assert time.monotonic() < deadline, "the stream of a client that left is still active"
        time.sleep(0.05)


def test_a_client_that_leaves_before_a_whole_answer_is_dropped(server):
    import time

    u = urlparse(server.url)
    body = json.dumps({"prompt": "a", "max_tokens": LONG}).encode()
    with socket.create_connection((u.hostname, u.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 60
        while server.metric("charrnn_active_streams", AUTH) < 1:  # generating (not streamed: nothing to read yet)
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while server.metric("charrnn_active_streams", AUTH) != 0:
        assert time.monotonic() < deadline, "the request of a client that left is still generating"
        time.sleep(0.05)


def test_queue_full_is_429(tiny_run):
    s = Server(tiny_run, "--port", 0, "--max-streams", 1, "--max-queue", 0, "--max-chars", LONG)
    try:
        busy = Stream(s.url, {"prompt": "a", "max_tokens": LONG}, headers={})
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="run", prompt="a", max_tokens=5)
        assert "busy" in e.value.message
        busy.close()
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_with_streams_in_flight_exits_0(tiny_run, sig):
    s = Server(tiny_run, "--port", 0, "--max-chars", LONG)
    results = {}
    try:
        streams = [Stream(s.url, {"prompt": "the ", "max_tokens": LONG, "seed": i}, headers={}) for i in range(3)]

        def finish(i):
            results[i] = streams[i].rest()

        threads = [threading.Thread(target=finish, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        code = s.stop(sig)
        for t in threads:
            t.join(60)
    finally:
        s.stop(sig=9)
    assert code == 0, s.stderr
    assert not any("Traceback" in line for line in s.stderr), s.stderr
    for i in range(3):
        events = completion_events(results[i])  # each stream ends with its last chunk and data: [DONE]
        assert events[-1]["choices"][0]["finish_reason"] is not None


# --------------------------------------------------------------------------------------------- the command line
def test_port_in_use_is_one_line(tiny_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_cli("serve", tiny_run, "--port", port, timeout=180)
    assert_one_line_error(proc, 75, "cannot listen on 127.0.0.1:", str(port))


def test_bad_options_and_missing_checkpoint(tiny_run, tmp_path):
    assert_one_line_error(run_cli("serve", tiny_run, "--max-streams", 0), 2, "--max-streams")
    assert_one_line_error(run_cli("serve", tmp_path / "nothing.pt"), 66, "no such checkpoint")


def test_missing_extra_is_one_line_exit_2(tiny_run, tmp_path):
    fake = tmp_path / "fake" / "starlette"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'starlette'\", name='starlette')\n")
    env = cli_env(PYTHONPATH=f"{tmp_path / 'fake'}:{ROOT}")
    assert_one_line_error(run_cli("serve", tiny_run, env=env), 2, 'pip install "charrnn[serve]"', "starlette")


def test_other_commands_do_not_import_the_extra():
    code = ("import sys, charrnn, charrnn.cli.commands\n"
            "bad = [m for m in ('starlette', 'uvicorn', 'prometheus_client', 'charrnn.serve.app') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([__import__("sys").executable, "-c", code], env=cli_env(), check=True, timeout=120)
