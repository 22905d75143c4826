"""Start `charrnn serve` as a real subprocess for the serve tests: wait for its start-up line (never a sleep),
and always stop it."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from conftest import cli_env

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 100_000  # characters: a stream that runs until the test ends it

READY = re.compile(r"^charrnn: serving .* on (http://\S+)$")
START_TIMEOUT = 180  # seconds: a loaded 2-core machine importing torch and loading numba's cache


class Server:
    def __init__(self, *args, env=None, cwd=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", *map(str, args)], cwd=cwd,
                                     env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.url is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"no start-up line in {START_TIMEOUT}s: {self.stderr}")
            if line is None:
                raise AssertionError(f"serve exited {self.proc.wait()} before listening: {self.stderr}")
            m = READY.match(line)
            if m:
                self.url = m.group(1)

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pattern: str, timeout: float = 120) -> str:
        """The next stderr line matching the regex `pattern` (the process reports it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s: {self.stderr}")
            if line is None:
                raise AssertionError(f"serve exited while waiting for {pattern!r}: {self.stderr}")
            if re.search(pattern, line):
                return line

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """(status, parsed JSON or text) of one request."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, payload, kind = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, payload, kind = e.code, e.read(), e.headers.get("content-type", "")
        return status, (json.loads(payload) if "json" in kind else payload.decode("utf-8"))

    def metric(self, name: str, headers=None) -> float:
        _, text = self.request("GET", "/metrics", headers=headers)
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name}")


def completion_events(raw: str) -> list:
    """The JSON chunks of a server-sent event stream, checked to end with data: [DONE]."""
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]", events[-3:]
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


class Stream:
    """A raw streaming completion on its own connection: read its first chunk, then keep or drop it."""

    def __init__(self, url: str, body: dict, headers=AUTH):
        u = urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                          {"Content-Type": "application/json", **headers})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.first = self.response.readline()  # the first event's data line: the stream is generating
        assert self.first.startswith(b"data: "), self.first

    def rest(self) -> str:
        return (self.first + self.response.read()).decode("utf-8")

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
