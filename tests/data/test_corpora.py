"""Corpora by name and URL: download into the data dir, sha256 check, cache reuse, offline errors.

Every download goes to a loopback HTTP server started in a thread; nothing here touches the network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import threading

import pytest

from charrnn.data import corpora
from charrnn.errors import DataError, InputMissingError, UsageError
from conftest import TINY, assert_one_line_error, cli_env, make_corpus, run_cli



class _Server:
    def __init__(self, files: dict):
        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(tmp_path):
    text = make_corpus(tmp_path / "served.txt", n_chars=4000).read_bytes()
    srv = _Server({"/corpus/input.txt": text})
    srv.body = text
    srv.sha = hashlib.sha256(text).hexdigest()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _dead_url() -> str:
    """A loopback URL nobody listens on: connecting is refused at once, like being offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


def test_url_is_downloaded_verified_and_then_reused(server, tmp_path):
    url = server.url("/corpus/input.txt")
    data = tmp_path / "data"
    path = corpora.resolve_corpus(url, sha256=server.sha, data_dir=str(data))
    assert os.path.dirname(path) == str(data)
    assert os.path.basename(path).startswith("input-") and path.endswith(".txt")
    with open(path, "rb") as f:
        assert f.read() == server.body
    assert server.requests == ["/corpus/input.txt"]
    assert not [n for n in os.listdir(data) if n.startswith(".tmp")]  # the temp file was renamed away
    again = corpora.resolve_corpus(url, sha256=server.sha, data_dir=str(data))
    assert again == path
    assert len(server.requests) == 1  # the cached file was reused: no second download


def test_two_urls_with_the_same_file_name_do_not_collide(tmp_path):
    a = corpora.cache_path_for_url("https://a.example/x/input.txt", str(tmp_path))
    b = corpora.cache_path_for_url("https://b.example/y/input.txt", str(tmp_path))
    assert a != b and os.path.basename(a).startswith("input-")


def test_sha256_mismatch_is_an_error_and_nothing_is_cached(server, tmp_path):
    data = tmp_path / "data"
    with pytest.raises(DataError, match="sha256"):
        corpora.resolve_corpus(server.url("/corpus/input.txt"), sha256="0" * 64, data_dir=str(data))
    assert os.listdir(data) == []  # neither the bad file nor a temp file is left


def test_disk_full_during_a_download_is_one_line_74_and_nothing_is_cached(server, tmp_path, monkeypatch):
    import faults
    from charrnn.store import fileio
    from charrnn.errors import WriteError

    data = tmp_path / "data"
    monkeypatch.setattr(fileio, "write_hook", faults.disk_full_after(1000, suffix=".txt"))
    with pytest.raises(WriteError) as info:
        corpora.resolve_corpus(server.url("/corpus/input.txt"), data_dir=str(data))
    assert info.value.exit_code == 74 and info.value.message.endswith(": disk full")
    assert corpora.cache_path_for_url(server.url("/corpus/input.txt"), str(data)) in info.value.message
    assert os.listdir(data) == []  # neither a partial file nor a temp file is left


def test_named_corpus_downloads_from_its_url_and_checks_its_builtin_sha(server, tmp_path, monkeypatch):
    fake = dataclasses.replace(corpora.NAMED["shakespeare"], sha256=server.sha, filename="tiny.txt")
    monkeypatch.setitem(corpora.NAMED, "shakespeare", fake)
    monkeypatch.setenv("CHARRNN_CORPUS_URL_SHAKESPEARE", server.url("/corpus/input.txt"))
    monkeypatch.chdir(tmp_path)
    path = corpora.resolve_corpus("shakespeare", data_dir=str(tmp_path / "data"))
    assert path == str(tmp_path / "data" / "tiny.txt")
    assert corpora.file_sha256(path) == server.sha
    # a damaged cached copy is noticed and downloaded again
    with open(path, "ab") as f:
        f.write(b"garbage")
    assert corpora.resolve_corpus("shakespeare", data_dir=str(tmp_path / "data")) == path
    assert corpora.file_sha256(path) == server.sha
    assert len(server.requests) == 2


def test_named_corpus_with_wrong_bytes_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CORPUS_URL_SHAKESPEARE", server.url("/corpus/input.txt"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=corpora.NAMED["shakespeare"].sha256):
        corpora.resolve_corpus("shakespeare", data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "tinyshakespeare.txt").exists()


def test_a_local_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARRNN_CORPUS_URL_SHAKESPEARE", _dead_url())
    (tmp_path / "shakespeare").write_text("my own text\n", encoding="utf-8")
    assert corpora.resolve_corpus("shakespeare") == "shakespeare"
    assert corpora.resolve_corpus(None) is None and corpora.resolve_corpus("-") == "-"


def test_sha256_of_a_local_file_is_checked_too(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"hello\n")
    good = hashlib.sha256(b"hello\n").hexdigest()
    assert corpora.resolve_corpus(str(path), sha256=good.upper()) == str(path)
    with pytest.raises(DataError, match=good):
        corpora.resolve_corpus(str(path), sha256="1" * 64)


def test_python_api_exposes_corpora():
    import charrnn

    assert charrnn.resolve_corpus is corpora.resolve_corpus


def test_unknown_name_and_bad_sha_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputMissingError, match="shakespeare"):
        corpora.resolve_corpus("no-such-thing")
    with pytest.raises(UsageError, match="--sha256"):
        corpora.resolve_corpus("https://example.invalid/x.txt", sha256="xyz")


def test_http_error_says_which_file_to_place_where(server, tmp_path):
    url = server.url("/missing.txt")
    with pytest.raises(InputMissingError) as info:
        corpora.resolve_corpus(url, data_dir=str(tmp_path / "data"))
    message = info.value.message
    assert "HTTP 404" in message and "place it at" in message
    assert corpora.cache_path_for_url(url, str(tmp_path / "data")) in message


def test_cli_offline_named_corpus_is_one_line_naming_the_file(tmp_path):
    home = tmp_path / "home"
    proc = run_cli("train", "shakespeare", "--max-steps", "1", cwd=tmp_path,
                   env=cli_env(CHARRNN_HOME=home, CHARRNN_CORPUS_URL_SHAKESPEARE=_dead_url()))
    line = assert_one_line_error(proc, 66, "cannot download shakespeare", "place it at")
    assert os.path.join(str(home), "data", "tinyshakespeare.txt") in line
    assert corpora.NAMED["shakespeare"].sha256 in line


def test_cli_trains_on_a_url_and_a_wrong_sha256_exits_65(server, tmp_path):
    home = tmp_path / "home"
    env = cli_env(CHARRNN_HOME=home)
    url = server.url("/corpus/input.txt")
    bad = run_cli("train", url, "--sha256", "f" * 64, "--max-steps", "1", "--quiet", *TINY, cwd=tmp_path, env=env)
    assert_one_line_error(bad, 65, "sha256", "expected " + "f" * 64)
    assert not os.path.exists(corpora.cache_path_for_url(url, str(home / "data")))
    ok = run_cli("train", url, "--sha256", server.sha, "--max-steps", "2", "--eval-every", "2", "--quiet", *TINY,
                 cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr.decode()
    cached = corpora.cache_path_for_url(url, str(home / "data"))
    assert open(cached, "rb").read() == server.body
    runs = os.listdir(home / "checkpoints")  # CHARRNN_HOME moved the run directory too
    assert len(runs) == 1 and runs[0].startswith("input-")
    info = json.loads(run_cli("info", "--json", cwd=tmp_path, env=env, check=0).stdout)
    assert info["corpus"]["sha256"] == server.sha
    assert info["corpus"]["source"] == os.path.abspath(cached)


def test_cli_corpora_lists_the_named_ones(tmp_path):
    proc = run_cli("corpora", "--json", cwd=tmp_path, env=cli_env(CHARRNN_HOME=tmp_path), check=0)
    rows = json.loads(proc.stdout)
    names = {row["name"]: row for row in rows}
    assert names["shakespeare"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert names["shakespeare"]["size"] == 1_115_394
    assert names["shakespeare"]["url"].endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    assert names["shakespeare"]["cached"] is False
    text = run_cli("corpora", cwd=tmp_path, env=cli_env(CHARRNN_HOME=tmp_path), check=0).stdout.decode()
    assert "shakespeare" in text and "not downloaded yet" in text


def test_a_download_killed_mid_write_leaves_a_temp_the_next_download_removes(server, tmp_path):
    """A partial download's temp file (its writer killed: nobody holds its lock) is removed before the next
    download into that directory; a file that is not a temp is not touched."""
    from charrnn.store import fileio

    data = tmp_path / "data"
    data.mkdir()
    stale = data / (fileio.TEMP_PREFIX + "input-0123456789.txt.deadbeef")
    stale.write_bytes(b"x" * 4096)
    other = data / "notes.txt"
    other.write_text("mine")
    path = corpora.resolve_corpus(server.url("/corpus/input.txt"), sha256=server.sha, data_dir=str(data))
    assert sorted(os.listdir(data)) == sorted([os.path.basename(path), "notes.txt"])
    assert other.read_text() == "mine"
