"""Corpora larger than RAM: hashed, scanned and encoded once, in chunks, into a content-addressed cache of ids, and
memory-mapped read-only; smaller ones encoded in memory. `load_ids` is the one way a command gets a corpus's ids."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from ..errors import DataError, unreadable
from ..store.fileio import atomic_write, sweep_stale_temps, write_bytes, write_error
from .dataset import BOM, DEMO_SOURCE, CorpusScan, read_corpus, scan_corpus
from .vocab import Vocab, code_points

CHUNK_BYTES = 16 * 1024 * 1024
CACHE_MIN_BYTES = 64 * 1024 * 1024  # smaller corpora are read into memory as before
MAX_CODE_POINT = 0x10FFFF


@dataclass
class EncodedCorpus:
    ids: np.ndarray  # N ids; a read-only np.memmap for a cached corpus
    vocab: "Vocab"
    source: str
    files: list[str]
    sha256: str  # of the raw bytes, files concatenated in order (the same as CorpusText.sha256)
    scan: Optional[CorpusScan] = None  # how a file or directory's files were found

    @property
    def chars(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        """What was read, for the start-of-run log: files, characters, and what a directory left out."""
        if self.source == "-":
            where, files = "standard input", ""
        else:
            where = "the demo corpus" if self.source == DEMO_SOURCE else self.source
            files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}, "
        line = f"read {files}{self.chars:,} characters ({len(self.vocab)} distinct) from {where}"
        scan = self.scan or CorpusScan(self.files)
        if scan.duplicates:
            line += f"; {scan.duplicates} file(s) reached twice through a link, read once"
        if scan.links_not_followed:
            shown = ", ".join(scan.links_not_followed[:3]) + (", ..." if len(scan.links_not_followed) > 3 else "")
            line += (f"; {len(scan.links_not_followed)} symlinked director"
                     f"{'ies' if len(scan.links_not_followed) != 1 else 'y'} not followed ({shown}; "
                     f"--follow-links reads {'them' if len(scan.links_not_followed) != 1 else 'it'})")
        return line


CACHE_HINT = " (CHARRNN_CACHE_DIR moves it)"


def _no_hook(chars_written: int) -> None:
    return None


# Called after each chunk a first encode writes into the cache, with the characters written so far; does nothing by
# default. Tests slow the encode or make it fail through it (tests/faults.py: slow_encode, encode_fails).
encode_hook = _no_hook


def cache_dir() -> str:
    from ..store.paths import data_dir

    return os.environ.get("CHARRNN_CACHE_DIR") or os.path.join(data_dir(), "cache")


def _file_chunks(path: str, chunk_bytes: int) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk_bytes)
                if not block:
                    return
                yield block
    except OSError as exc:
        raise unreadable(exc, path) from None


def _decoded_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[np.ndarray, int]]:
    """(code points, bytes read so far) for each chunk of a file, decoded as strict UTF-8 with a leading BOM
    dropped. A character split across a chunk boundary is carried to the next chunk; an invalid byte is the same
    error, at the same byte offset, as decoding the whole file at once."""
    import codecs

    pending, base, at_start = b"", 0, True  # base: file offset of pending[0]
    blocks = _file_chunks(path, chunk_bytes)
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)
        data = pending + block
        try:
            text, used = codecs.utf_8_decode(data, "strict", following is None)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} is not valid UTF-8: invalid byte 0x{data[exc.start]:02x} at byte offset {base + exc.start}"
            ) from None
        if at_start and text:
            text, at_start = text[1:] if text.startswith(BOM) else text, False
        pending, base = data[used:], base + used
        yield code_points(text), base + len(pending)
        block = following


def load_ids(source: Optional[str], pattern: str = "*.txt", chunk_bytes: int = CHUNK_BYTES,
             min_bytes: Optional[int] = None, progress: bool = True, follow_links: bool = False) -> EncodedCorpus:
    """The corpus as ids with its vocabulary. Files of min_bytes or more in all (default CACHE_MIN_BYTES, or env
    CHARRNN_CACHE_MIN_BYTES) go through the cache: the first run hashes, scans and encodes them in chunks into
    <cache dir>/<sha256>.ids (+ .json with the vocabulary); every run memory-maps that file read-only, so memory
    does not grow with the corpus. Smaller corpora, stdin and the demo are read into memory. A directory's files
    are found by `scan_corpus` (symlinked directories entered only with follow_links)."""
    if min_bytes is None:
        min_bytes = int(os.environ.get("CHARRNN_CACHE_MIN_BYTES", CACHE_MIN_BYTES))
    scan = None
    if source is not None and source not in (DEMO_SOURCE, "-"):
        scan = scan_corpus(source, pattern, follow_links)
        size = sum(os.path.getsize(f) for f in scan.files)
        if size >= min_bytes:
            encoded = _cached_ids(source, scan.files, size, chunk_bytes, progress)
            encoded.scan = scan
            return encoded
    text = read_corpus(source, pattern, scan=scan)
    vocab = Vocab.from_text(text.text)
    return EncodedCorpus(vocab.encode(text.text), vocab, text.source, text.files, text.sha256, scan)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not enabled,
                leave=False, dynamic_ncols=True)


def _cached_ids(source: str, files: list[str], size: int, chunk_bytes: int, progress: bool) -> EncodedCorpus:
    import json

    sweep_stale_temps(cache_dir(), "corpus cache", "an interrupted encode")
    digest = hashlib.sha256()
    with _progress(size, "hashing corpus", progress) as bar:
        for path in files:
            for block in _file_chunks(path, chunk_bytes):
                digest.update(block)
                bar.update(len(block))
    sha = digest.hexdigest()
    # per-file BOMs are dropped, so the same bytes cut into files differently could decode differently
    layout = hashlib.sha256(",".join(str(os.path.getsize(f)) for f in files).encode()).hexdigest()[:8]
    base = os.path.join(cache_dir(), f"{sha}-{layout}")
    meta = None
    try:
        with open(base + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if os.path.getsize(base + ".ids") != meta["chars"] * np.dtype(meta["dtype"]).itemsize:
            meta = None  # a cut-short cache file: encode again
    except (OSError, ValueError, KeyError, TypeError):
        meta = None
    if meta is None:
        meta = _encode_to_cache(files, base, size, chunk_bytes, progress)
        meta["sha256"] = sha
        write_bytes(base + ".json", json.dumps(meta).encode("utf-8"), "corpus cache", CACHE_HINT)
    vocab = Vocab(meta["vocab"])
    ids = np.memmap(base + ".ids", dtype=meta["dtype"], mode="r") if meta["chars"] else np.zeros(0, vocab.dtype)
    return EncodedCorpus(ids, vocab, os.path.abspath(source), [os.path.abspath(f) for f in files], sha)


def _encode_to_cache(files: list[str], base: str, size: int, chunk_bytes: int, progress: bool) -> dict:
    """Two passes over the files: collect the set of characters, then write the ids. Returns the sidecar."""
    seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool)
    with _progress(size, "scanning corpus", progress) as bar:
        for path in files:
            done = 0
            for points, read in _decoded_chunks(path, chunk_bytes):
                seen[points] = True
                bar.update(read - done)
                done = read
    points = np.flatnonzero(seen)
    vocab = Vocab("".join(map(chr, points.tolist())))
    lookup = np.zeros(MAX_CODE_POINT + 1, dtype=vocab.dtype)
    lookup[points] = np.arange(len(points), dtype=vocab.dtype)  # code point -> id, one gather per chunk
    directory = os.path.dirname(base) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, directory, "corpus cache", CACHE_HINT) from None
    chars = 0
    # plain sequential writes, not a writable memmap: dirty mapped pages would count in this process's RSS
    with atomic_write(base + ".ids", "corpus cache", CACHE_HINT) as out, \
            _progress(size, "encoding corpus", progress) as bar:
        for path in files:
            done = 0
            for points_chunk, read in _decoded_chunks(path, chunk_bytes):
                out.write(lookup[points_chunk].tobytes())
                chars += len(points_chunk)
                encode_hook(chars)
                bar.update(read - done)
                done = read
    return {"format": 1, "vocab": vocab.chars, "chars": chars, "dtype": vocab.dtype.name}
