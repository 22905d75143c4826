"""Corpora by name and by URL: download once into the data directory, verify a sha256, reuse the cached file.

`resolve_corpus(arg)` turns a CORPUS argument into something `data.dataset.read_corpus` reads:

- None (the demo corpus), `-` (stdin) and any existing local path are returned unchanged: a name that is also
  a local file or directory means the local one;
- a named corpus (see `NAMED`, `charrnn corpora`) becomes its cached file in $CHARRNN_HOME/data, downloaded
  from its canonical URL the first time and checked against its built-in sha256;
- an http(s) URL becomes data/STEM-HASH.EXT (HASH from the URL, so two URLs ending in input.txt do not
  collide), checked against `sha256` when given.

A download goes to a temp file in the data directory and is renamed into place only after its sha256 matched,
so the cache never holds a partial or wrong file. Errors: download failed or offline -> InputMissingError (66)
naming the file to place where; sha256 mismatch -> DataError (65); a write failure -> fileio.write_error (data
directory not creatable -> 73, disk full -> 74). For tests, CHARRNN_CORPUS_URL_<NAME> overrides a named corpus's URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..errors import DataError, InputMissingError, UsageError
from ..store.fileio import atomic_write, sweep_stale_temps, write_error
from ..store.paths import data_dir as default_data_dir

log = logging.getLogger("charrnn")

URL_ENV_PREFIX = "CHARRNN_CORPUS_URL_"
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    url: str
    sha256: str
    size: int  # bytes
    filename: str  # the cached file's name in the data directory
    description: str

    def source_url(self) -> str:
        """The canonical URL, unless CHARRNN_CORPUS_URL_<NAME> overrides it (tests use a loopback server)."""
        return os.environ.get(URL_ENV_PREFIX + self.name.upper().replace("-", "_")) or self.url


NAMED = {
    "shakespeare": NamedCorpus(
        name="shakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        filename="tinyshakespeare.txt",
        description="tiny-shakespeare: 40,000 lines of Shakespeare (karpathy/char-rnn), 1.1 MB",
    ),
}


def is_url(arg: str) -> bool:
    return arg.startswith(("http://", "https://"))


def cache_path_for_url(url: str, directory: Optional[str] = None) -> str:
    """data/STEM-HASH.EXT for a URL: readable, and distinct for distinct URLs."""
    base = os.path.basename(urlparse(url).path) or "corpus.txt"
    stem, ext = os.path.splitext(base)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60] or "corpus"
    ext = re.sub(r"[^A-Za-z0-9.]+", "", ext)[:10]
    tag = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    return os.path.join(directory or default_data_dir(), f"{stem}-{tag}{ext}")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256_arg(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise UsageError(f"--sha256 must be 64 hexadecimal digits, not {sha256!r}")
    return value


def resolve_corpus(arg: Optional[str], sha256: Optional[str] = None, data_dir: Optional[str] = None) -> Optional[str]:
    """The local path (or None / '-') that `data.dataset.read_corpus` should read for a CORPUS argument; see the
    module doc."""
    path = corpus_path(arg, sha256, data_dir)  # the refusals that cost nothing come first
    expected = _check_sha256_arg(sha256)
    if path == arg:  # None, '-' or a local path
        if expected is not None and arg not in (None, "-") and os.path.isfile(arg):
            actual = file_sha256(arg)
            if actual != expected:
                raise DataError(f"{arg} has sha256 {actual}, not the expected {expected}")
        return arg
    if arg in NAMED:
        return fetch(NAMED[arg].source_url(), path, NAMED[arg].sha256, what=arg)
    return fetch(arg, path, expected, what=arg)


def corpus_path(arg: Optional[str], sha256: Optional[str] = None, data_dir: Optional[str] = None) -> Optional[str]:
    """The path `resolve_corpus(arg, sha256)` returns, found without reading, hashing or downloading anything (a
    run directory is named and locked before the corpus is resolved). Raises what needs no work: a malformed
    sha256, a named corpus with another sha256, an argument that is no path, name or URL."""
    expected = _check_sha256_arg(sha256)
    if arg is None or arg == "-" or os.path.exists(arg):
        return arg
    directory = data_dir or default_data_dir()
    if arg in NAMED:
        if expected is not None and expected != NAMED[arg].sha256:
            raise UsageError(f"--sha256 does not match the built-in sha256 of the named corpus {arg!r}")
        return os.path.join(directory, NAMED[arg].filename)
    if is_url(arg):
        return cache_path_for_url(arg, directory)
    names = ", ".join(sorted(NAMED))
    raise InputMissingError(
        f"no such file or directory, and not a named corpus or URL: {arg} (named corpora: {names}; "
        f"see `charrnn corpora`)"
    )


def fetch(url: str, dest: str, sha256: Optional[str], what: str) -> str:
    """Return dest, downloading url to it first unless a cached copy (with the right sha256, if known) is there."""
    if os.path.isfile(dest):
        if sha256 is None:
            log.info(f"using cached {dest}")
            return dest
        actual = file_sha256(dest)
        if actual == sha256:
            log.info(f"using cached {dest}")
            return dest
        log.warning(f"cached {dest} has sha256 {actual[:12]}..., expected {sha256[:12]}...: downloading it again")
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, directory, "data directory") from None
    actual = _download(url, dest, sha256, what)
    if sha256 is None:
        log.info(f"{dest}: sha256 {actual} (pass --sha256 {actual} to verify it next time)")
    return dest


def _origin(what: str, url: str) -> str:
    return url if what == url else f"{what} from {url}"


def _place_hint(url: str, dest: str, sha256: Optional[str]) -> str:
    check = f" (sha256 {sha256})" if sha256 else ""
    return f"download {url} yourself and place it at {dest}{check}, then run again"


def _download(url: str, dest: str, sha256: Optional[str], what: str) -> str:
    """Stream url into dest through fileio.atomic_write: a temp file beside dest, renamed into place only after
    the sha256 matched. Returns the sha256."""
    sweep_stale_temps(os.path.dirname(os.path.abspath(dest)), "download", "an interrupted download")
    digest = hashlib.sha256()
    with atomic_write(dest, "downloaded corpus") as out:
        for block in _blocks(url, dest, sha256, what):
            digest.update(block)
            out.write(block)
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise DataError(
                f"downloaded {_origin(what, url)} has sha256 {actual}, expected {sha256}; nothing was cached"
            )
    return actual


def _blocks(url: str, dest: str, sha256: Optional[str], what: str) -> Iterator[bytes]:
    """The body of url, block by block. A failed download is an InputMissingError saying which file to place
    where; errors writing the blocks are the caller's (they are raised in its frame, not here)."""
    import urllib.error
    import urllib.request

    try:
        request = urllib.request.Request(url, headers={"User-Agent": "charrnn"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            log.info(f"downloading {_origin(what, url)} to {dest}")  # connected: say so
            while True:
                block = response.read(_CHUNK)
                if not block:
                    return
                yield block
    except urllib.error.HTTPError as exc:
        raise InputMissingError(
            f"cannot download {what}: HTTP {exc.code} from {url}; {_place_hint(url, dest, sha256)}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputMissingError(
            f"cannot download {what} (offline? {reason}); {_place_hint(url, dest, sha256)}"
        ) from None


def list_corpora(data_dir: Optional[str] = None) -> list[dict]:
    """The named corpora, with where each is (or would be) cached and whether it is there."""
    directory = data_dir or default_data_dir()
    rows = []
    for corpus in NAMED.values():
        path = os.path.join(directory, corpus.filename)
        rows.append({
            "name": corpus.name,
            "description": corpus.description,
            "size": corpus.size,
            "sha256": corpus.sha256,
            "url": corpus.url,
            "path": path,
            "cached": os.path.isfile(path),
        })
    return rows
