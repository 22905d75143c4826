"""Reading corpora: a file, a directory of files, standard input or the offline demo, as UTF-8 text (a leading BOM
is dropped; line endings are kept exactly as they are), with the sha256 of the bytes read. The vocabulary is in
vocab.py, the encoded cache and `load_ids` in cache.py, the splits and the stream batcher in batches.py."""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from typing import Optional

from ..errors import DataError, InputMissingError, unreadable

BOM = "\ufeff"
DEMO_SOURCE = "<demo:python-stdlib>"
DEMO_TARGET_BYTES = 3_000_000



def decode_utf8(raw: bytes, name: str) -> str:
    """Decode strict UTF-8, naming the byte offset of the first invalid byte; drop a leading BOM."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name} is not valid UTF-8: invalid byte 0x{raw[exc.start]:02x} at byte offset {exc.start}"
        ) from None
    if text.startswith(BOM):
        text = text[1:]
    return text


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise unreadable(exc, path) from None


@dataclass
class CorpusScan:
    """The files a corpus argument names, and what was left out of a directory on the way."""

    files: list[str]
    duplicates: int = 0  # files reached again by another path (a symlink or hard link): read once
    links_not_followed: tuple = ()  # symlinked directories left out (follow_links reads them)


def scan_corpus(source: str, pattern: str = "*.txt", follow_links: bool = False) -> CorpusScan:
    """The files a corpus argument names: the file itself, or a directory's files matching `pattern` at any depth
    (what glob's `DIR/**/PATTERN` matches: hidden directories skipped), in sorted path order. A symlinked
    directory is entered only with follow_links, and a directory already entered (a link back up) never again;
    a file reached twice (the same file through a link) is listed once, at its first path."""
    if not os.path.isdir(source):
        if not os.path.exists(source):
            raise InputMissingError(f"no such file or directory: {source}")
        return CorpusScan([source])
    found, skipped, entered = [], [], set()
    for top, dirs, _ in os.walk(source, followlinks=follow_links):
        real = os.path.realpath(top)
        if real in entered:  # reached again through a link: its files are already listed
            dirs[:] = []
            continue
        entered.add(real)
        kept = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if not follow_links and os.path.islink(os.path.join(top, name)):
                skipped.append(os.path.join(top, name))
            else:
                kept.append(name)
        dirs[:] = kept
        found += (p for p in globlib.glob(os.path.join(globlib.escape(top), pattern)) if os.path.isfile(p))
    files, seen = [], set()
    for path in sorted(set(found)):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(path)
    if not files:
        raise InputMissingError(f"no files matching {pattern!r} in directory {source}")
    return CorpusScan(files, len(set(found)) - len(files), tuple(sorted(skipped)))


def corpus_files(source: str, pattern: str = "*.txt", follow_links: bool = False) -> list[str]:
    """The files a corpus argument names (see `scan_corpus`)."""
    return scan_corpus(source, pattern, follow_links).files


def demo_files() -> list[str]:
    """A deterministic few-MB selection of the running interpreter's standard library source (offline demo)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    chosen, total = [], 0
    for path in sorted(globlib.glob(os.path.join(stdlib, "*.py"))):
        try:
            size = os.path.getsize(path)
        except OSError:
            continue
        chosen.append(path)
        total += size
        if total >= DEMO_TARGET_BYTES:
            break
    if not chosen:
        raise InputMissingError(f"no Python source found in {stdlib} for the demo corpus")
    return chosen


@dataclass
class CorpusText:
    text: str
    source: str  # what the user named: a path, '-' or the demo marker
    files: list[str]
    sha256: str  # of the raw bytes, files concatenated in order
    scan: Optional[CorpusScan] = None  # how a file or directory's files were found


def read_corpus(source: Optional[str], pattern: str = "*.txt", follow_links: bool = False,
                scan: Optional[CorpusScan] = None) -> CorpusText:
    """Read a corpus: a file, a directory of files, '-' for stdin, or None for the built-in demo corpus.
    `scan`: the directory's files as `scan_corpus` found them (else they are found here)."""
    digest = hashlib.sha256()
    parts: list[str] = []
    if source is None or source == DEMO_SOURCE:
        files = demo_files()
        for path in files:
            raw = _read_file(path)
            try:
                parts.append(decode_utf8(raw, path))
            except DataError:
                continue  # the demo skips the rare non-UTF-8 file; the selection stays deterministic
            digest.update(raw)
        return CorpusText("".join(parts), DEMO_SOURCE, files, digest.hexdigest())
    if source == "-":
        raw = sys.stdin.buffer.read()
        digest.update(raw)
        return CorpusText(decode_utf8(raw, "standard input"), "-", [], digest.hexdigest())
    scan = scan or scan_corpus(source, pattern, follow_links)
    for path in scan.files:
        raw = _read_file(path)
        digest.update(raw)
        parts.append(decode_utf8(raw, path))
    return CorpusText("".join(parts), os.path.abspath(source), [os.path.abspath(f) for f in scan.files],
                      digest.hexdigest(), scan)
