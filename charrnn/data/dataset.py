"""Corpus sources, the character vocabulary, contiguous splits and the parallel-stream batcher.

Text is read as UTF-8 (a leading BOM is dropped; line endings are kept exactly as they are). One token is one
Unicode code point, and the vocabulary is the sorted set of code points in the corpus. Ids are stored in the
smallest unsigned numpy dtype that holds the vocabulary.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import DataError, InputMissingError, UsageError, unreadable
from ..store.fileio import atomic_write, sweep_stale_temps, write_bytes, write_error

BOM = "\ufeff"
DEMO_SOURCE = "<demo:python-stdlib>"
DEMO_TARGET_BYTES = 3_000_000


# ----------------------------------------------------------------------------------------------------------------
# reading text


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


# ----------------------------------------------------------------------------------------------------------------
# vocabulary


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..vocab_size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"vocabulary of {vocab_size} characters is too large")


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class Vocab:
    """The sorted set of characters of a corpus; id i is the i-th character."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise DataError("vocabulary has repeated characters")
        self.chars = "".join(sorted(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._points = code_points(self.chars)
        self.dtype = id_dtype(max(1, len(self.chars)))

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls("".join(chr(c) for c in np.unique(code_points(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:  # equal vocabularies hash alike, so a Vocab can be a dict key or a set member
        return hash((Vocab, self.chars))

    def unknown(self, text: str) -> list[str]:
        """Characters of text that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> np.ndarray:
        """Text to ids (every character must be in the vocabulary; see `unknown`)."""
        points = code_points(text)
        ids = np.searchsorted(self._points, points)
        ids = np.minimum(ids, len(self._points) - 1)
        if len(points) and not np.array_equal(self._points[ids], points):
            missing = self.unknown(text)
            raise DataError(f"characters not in the vocabulary: {describe_chars(missing)}")
        return ids.astype(self.dtype)

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)


def describe_chars(chars: Sequence[str], limit: int = 12) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return shown + more


# ----------------------------------------------------------------------------------------------------------------
# corpora larger than RAM: encode once, in chunks, into a content-hashed cache, and memory-map it read-only

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


# ----------------------------------------------------------------------------------------------------------------
# splits and the stream layout


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_ids(ids: np.ndarray, val_frac: float, test_frac: float) -> Splits:
    """Contiguous split: train is the first part, then val, then test."""
    n = len(ids)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    n_train = n - n_val - n_test
    return Splits(ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


class StreamBatcher:
    """Lays the training ids out as B parallel streams for stateful truncated BPTT.

    With ids a b c d e f g h i j k l m n o p q r s t u v w x y ... and B = 3 streams of S characters each::

        stream 0: a b c d e f g h | ...        batch 0 = columns [0, T) of every stream,
        stream 1: i j k l m n o p | ...        batch 1 = columns [T, 2T), and so on.
        stream 2: q r s t u v w x | ...

    Targets are the same layout shifted by one character. Row i of batch k+1 continues row i of batch k, which is
    what makes carrying the hidden state from one batch to the next correct (random windows would break that).
    Columns past the last whole window of T are dropped each epoch.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = (len(ids) - 1) // batch_size
        self.num_batches = self.stream_len // seq_len
        if self.num_batches < 1:
            need = batch_size * seq_len + 1
            raise DataError(
                f"the training split has {len(ids)} characters but one batch needs {need} "
                f"(--batch-size {batch_size} x --seq-len {seq_len} + 1): use a longer corpus or lower "
                f"--batch-size / --seq-len"
            )
        n = batch_size * self.stream_len
        self.inputs = ids[:n].reshape(batch_size, self.stream_len)  # B, S (a view: no copy, memmap-friendly)
        self.targets = ids[1 : n + 1].reshape(batch_size, self.stream_len)

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, k: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Batch k: inputs and targets of shape (B, T); `rows` selects a share of the streams (one DDP rank's)."""
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return np.ascontiguousarray(self.inputs[rows, cols]), np.ascontiguousarray(self.targets[rows, cols])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(self.num_batches):
            yield self.batch(k)


__all__ = [
    "CorpusText",
    "EncodedCorpus",
    "load_ids",
    "Vocab",
    "Splits",
    "StreamBatcher",
    "read_corpus",
    "split_ids",
    "decode_utf8",
    "corpus_files",
    "scan_corpus",
    "CorpusScan",
    "demo_files",
    "DEMO_SOURCE",
    "UsageError",
]
