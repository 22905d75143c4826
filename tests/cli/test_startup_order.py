"""Issue 30: start-up checks first, then works. A run directory another training holds is refused (exit 73) before
the corpus is resolved: no URL or named corpus is downloaded, no local file is hashed for --sha256. After the lock
the corpus is resolved as before. Downloads go to a loopback server started here; nothing touches the network."""

from __future__ import annotations

import hashlib
import http.server
import os
import sys
import threading

import pytest

from charrnn.data import corpora
from charrnn.errors import CannotCreateError
from charrnn.store.checkpoint import RunLock
from conftest import TINY, assert_one_line_error, cli_env, make_corpus, run_cli


class CountingServer:
    """Serves one file at /corpus/input.txt on 127.0.0.1 and records every request it sees."""

    def __init__(self, body: bytes):
        self.body, self.requests = body, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                if self.path != "/corpus/input.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/corpus/input.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server(tmp_path):
    srv = CountingServer(make_corpus(tmp_path / "served.txt", n_chars=4000).read_bytes())
    srv.sha = hashlib.sha256(srv.body).hexdigest()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture
def held(tmp_path):
    """A run directory whose lock this test process holds, as a running `charrnn train` would."""
    run = tmp_path / "held-run"
    run.mkdir()
    with RunLock(str(run)):
        yield run


@pytest.mark.parametrize("kind", ["url", "named"])
def test_a_held_run_directory_is_refused_before_anything_is_downloaded(server, held, tmp_path, kind):
    home = tmp_path / "home"
    env = cli_env(CHARRNN_HOME=home, CHARRNN_CORPUS_URL_SHAKESPEARE=server.url)
    corpus = server.url if kind == "url" else "shakespeare"
    extra = ["--sha256", server.sha] if kind == "url" else []
    proc = run_cli("train", corpus, *extra, *TINY, "--max-steps", "2", "--run-dir", held, cwd=tmp_path, env=env)
    assert_one_line_error(proc, 73, f"run directory {held} is in use by another charrnn train (PID {os.getpid()})")
    assert server.requests == []  # the server saw no request at all
    assert not (home / "data").exists()  # nothing cached, no data directory made
    assert sorted(os.listdir(held)) == ["lock"]  # the holder's directory untouched


def _cli_in_process(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run charrnn's console entry point in this process (so a hook installed here sees what it does); returns the
    exit code and stderr."""
    from charrnn.cli.commands import main

    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def hashed(monkeypatch) -> list:
    """Every file corpora.file_sha256 hashes (the --sha256 check of a local file), recorded; it still hashes."""
    seen, real = [], corpora.file_sha256

    def recording(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(corpora, "file_sha256", recording)
    return seen


def test_a_held_run_directory_is_refused_before_a_local_corpus_is_hashed(held, tmp_path, monkeypatch, capsys,
                                                                          hashed):
    corpus = make_corpus(tmp_path / "corpus.txt")
    # a wrong sha256: had the file been checked first, this would be exit 65
    code, err = _cli_in_process(monkeypatch, capsys, "train", corpus, "--sha256", "0" * 64, *TINY, "--quiet",
                                "--run-dir", held)
    assert code == 73, err
    assert err.splitlines() == [f"charrnn: error: run directory {held} is in use by another charrnn train "
                                f"(PID {os.getpid()})"]
    assert hashed == []


def test_a_local_corpus_is_still_hashed_and_a_mismatch_leaves_nothing(tmp_path, monkeypatch, capsys, hashed):
    corpus = make_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    code, err = _cli_in_process(monkeypatch, capsys, "train", corpus, "--sha256", "0" * 64, *TINY, "--quiet",
                                "--run-dir", run)
    actual = hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert code == 65, err
    assert err.splitlines() == [f"charrnn: error: {corpus} has sha256 {actual}, not the expected {'0' * 64}"]
    assert hashed == [str(corpus)]
    assert not run.exists()  # the run directory made for the run went with it


def test_a_malformed_sha256_is_refused_before_the_run_directory_is_made(tmp_path, monkeypatch, capsys):
    corpus = make_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    code, err = _cli_in_process(monkeypatch, capsys, "train", corpus, "--sha256", "xyz", *TINY, "--run-dir", run)
    assert code == 2, err
    assert err.splitlines() == ["charrnn: error: --sha256 must be 64 hexadecimal digits, not 'xyz'"]
    assert not run.exists()


def test_the_python_api_resolves_a_url_after_the_lock(server, held, tmp_path, monkeypatch):
    import charrnn

    home = tmp_path / "home"
    monkeypatch.setenv("CHARRNN_HOME", str(home))
    model = charrnn.ModelConfig(hidden_size=32, num_layers=2)
    cfg = charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=2, eval_every=2, warmup_steps=1)
    with pytest.raises(CannotCreateError, match="is in use by another charrnn train"):
        charrnn.train(server.url, model, cfg, run_dir=str(held), progress=False, sha256=server.sha)
    assert server.requests == []
    result = charrnn.train(server.url, model, cfg, progress=False, sha256=server.sha)  # a new run directory
    cached = corpora.cache_path_for_url(server.url, str(home / "data"))
    assert server.requests == ["/corpus/input.txt"]
    assert open(cached, "rb").read() == server.body
    # named as before the change: after the cached file (input-HASH.txt), not the URL
    assert os.path.basename(result.run_dir).startswith(os.path.splitext(os.path.basename(cached))[0] + "-")
    loaded = charrnn.load_checkpoint(result.latest)
    assert loaded["corpus"]["sha256"] == server.sha
    assert loaded["corpus"]["source"] == os.path.abspath(cached)
