"""The chunked, cached corpus encoder equals the simple in-memory one, errors included, and reuses its cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from charrnn.data.cache import load_ids
from charrnn.data.dataset import read_corpus
from charrnn.data.vocab import Vocab
from charrnn.data.batches import split_ids, StreamBatcher
from charrnn.errors import DataError

TRICKY = [
    "plain ascii\nline two\r\n",
    "\ufeffBOM then text é ü ß",
    "mixed: é 中文 😀 z\u0301 end😀",
    "😀😀😀😀😀",
    "\ufeff",
    "a\ufeffb inner BOM is kept",
]


def _simple(path):
    text = read_corpus(str(path))
    vocab = Vocab.from_text(text.text)
    return vocab, vocab.encode(text.text), text.sha256


@pytest.mark.parametrize("content", TRICKY)
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_chunked_equals_simple(tmp_path, monkeypatch, content, chunk):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "c.txt"
    path.write_bytes(content.encode("utf-8"))
    vocab, ids, sha = _simple(path)
    got = load_ids(str(path), chunk_bytes=chunk, min_bytes=0, progress=False)
    assert isinstance(got.ids, np.memmap) or len(ids) == 0
    assert got.vocab == vocab and got.sha256 == sha
    assert np.array_equal(np.asarray(got.ids), ids)


def test_directory_of_files_with_bom_in_each(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.txt").write_bytes("\ufeffé1\n".encode())
    (d / "b.txt").write_bytes("\ufeff中2\n".encode())
    vocab, ids, sha = _simple(d)
    got = load_ids(str(d), chunk_bytes=2, min_bytes=0, progress=False)
    assert got.vocab == vocab and got.sha256 == sha and np.array_equal(np.asarray(got.ids), ids)


@pytest.mark.parametrize("raw", [b"ok \xff bad", b"ab\xe2\x28\xa1cd", b"abc\xe2\x82", b"\xc3", b"x" * 7 + b"\xf0\x9f\x98"])
@pytest.mark.parametrize("chunk", [1, 2, 4, 1000])
def test_invalid_utf8_same_error_and_offset(tmp_path, monkeypatch, raw, chunk):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError) as simple:
        read_corpus(str(path))
    with pytest.raises(DataError) as chunked:
        load_ids(str(path), chunk_bytes=chunk, min_bytes=0, progress=False)
    assert chunked.value.message == simple.value.message
    assert not os.listdir(tmp_path / "cache") if (tmp_path / "cache").exists() else True


def test_second_run_reuses_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    path = tmp_path / "c.txt"
    path.write_text("hello cache é\n" * 50, encoding="utf-8")
    first = load_ids(str(path), chunk_bytes=7, min_bytes=0, progress=False)
    files = sorted(os.listdir(cache))
    assert [f.rsplit(".", 1)[1] for f in files] == ["ids", "json"] and files[0].startswith(first.sha256)
    stamp = os.stat(cache / files[0]).st_mtime_ns

    import charrnn.data.cache as data

    def fail(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(data, "_encode_to_cache", fail)
    second = load_ids(str(path), chunk_bytes=7, min_bytes=0, progress=False)
    assert os.stat(cache / files[0]).st_mtime_ns == stamp
    assert np.array_equal(np.asarray(second.ids), np.asarray(first.ids)) and second.vocab == first.vocab
    assert not second.ids.flags.writeable  # mapped read-only


def test_changed_content_gets_a_new_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "c.txt"
    path.write_text("abc" * 10, encoding="utf-8")
    a = load_ids(str(path), min_bytes=0, progress=False)
    path.write_text("abd" * 10, encoding="utf-8")
    b = load_ids(str(path), min_bytes=0, progress=False)
    assert a.sha256 != b.sha256 and b.vocab.chars == "abd"


def test_memmap_splits_and_batches_are_views(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "c.txt"
    path.write_text("the quick brown fox " * 200, encoding="utf-8")
    got = load_ids(str(path), min_bytes=0, progress=False)
    splits = split_ids(got.ids, 0.1, 0.1)
    assert isinstance(splits.train, np.memmap) and np.shares_memory(splits.train, got.ids)
    batcher = StreamBatcher(splits.train, 4, 16)
    assert np.shares_memory(batcher.inputs, got.ids)
    x, y = batcher.batch(1)
    assert np.array_equal(x[:, 1:], y[:, :-1])


def test_train_and_eval_from_the_cache(tmp_path, monkeypatch):
    import charrnn
    from conftest import make_corpus

    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CHARRNN_CACHE_MIN_BYTES", "0")
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=6000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=2),
                           charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=5, eval_every=5),
                           run_dir=str(tmp_path / "run"), progress=False)
    assert os.listdir(tmp_path / "cache")
    from charrnn.inference.evaluation import evaluate

    scored = evaluate(result.latest)
    assert scored["text"] == "test split" and scored["chars"] == int(round(6000 * 0.05)) - 1


def test_disk_full_while_caching_is_one_line_74_naming_the_variable_and_leaves_no_temp(tmp_path, monkeypatch):
    import faults
    from charrnn.store import fileio
    from charrnn.errors import WriteError

    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    path = tmp_path / "c.txt"
    path.write_text("hello cache\n" * 500, encoding="utf-8")
    monkeypatch.setattr(fileio, "write_hook", faults.disk_full_after(100, suffix=".ids"))
    with pytest.raises(WriteError) as info:
        load_ids(str(path), chunk_bytes=64, min_bytes=0, progress=False)
    assert info.value.exit_code == 74
    assert "disk full" in info.value.message and "CHARRNN_CACHE_DIR" in info.value.message
    assert os.listdir(cache) == []
    monkeypatch.setattr(fileio, "write_hook", None)
    assert load_ids(str(path), chunk_bytes=64, min_bytes=0, progress=False).ids.shape == (6000,)


def test_an_encode_killed_mid_write_leaves_a_temp_the_next_run_removes_and_a_live_one_is_kept(tmp_path, caplog,
                                                                                              monkeypatch):
    """SIGKILL while the first encode writes the cache: its partial temp file stays (a kill runs no cleanup), is
    left alone while its writer lives, and the next run through the cache removes it and says so."""
    import json
    import logging
    import signal
    import subprocess
    import sys
    import time

    import faults
    from charrnn.store import fileio
    from conftest import TINY, cli_env, hang_guard, make_corpus

    cache = tmp_path / "cache"
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=6000)
    env = cli_env(CHARRNN_CACHE_DIR=cache, CHARRNN_CACHE_MIN_BYTES=0)
    hooks = json.dumps({"slow_encode": {"seconds": 3600}})
    proc = subprocess.Popen([sys.executable, faults.__file__, hooks, "train", str(corpus), *TINY, "--max-steps", "2",
                             "--run-dir", str(tmp_path / "run"), "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + hang_guard(60)
        while not (cache.exists() and any(n.startswith(fileio.TEMP_PREFIX) for n in os.listdir(cache))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        temp = [n for n in os.listdir(cache) if n.startswith(fileio.TEMP_PREFIX)]
        assert fileio.sweep_stale_temps(str(cache)) == [] and os.listdir(cache) == temp  # its writer is alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=hang_guard(30))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert sorted(os.listdir(cache)) == temp  # the killed encode's partial file, and nothing else
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    monkeypatch.setattr(logging.getLogger("charrnn"), "propagate", True)  # the CLI's setup, if run, turns it off
    with caplog.at_level(logging.INFO, logger="charrnn"):
        encoded = load_ids(str(corpus), min_bytes=0, progress=False)
    assert encoded.chars == 6000
    assert not [n for n in os.listdir(cache) if n.startswith(fileio.TEMP_PREFIX)]
    said = [r.getMessage() for r in caplog.records if "unfinished corpus cache file" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("removed 1 unfinished corpus cache file(s)") and str(cache) in said[0]
