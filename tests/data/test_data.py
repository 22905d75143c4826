"""Corpus reading, vocabulary, splits and the stream layout."""

import numpy as np
import pytest

from charrnn.data.dataset import DEMO_SOURCE, decode_utf8, demo_files, read_corpus
from charrnn.data.batches import StreamBatcher, split_ids
from charrnn.data.vocab import Vocab
from charrnn.errors import DataError, InputMissingError


def test_decode_drops_bom_keeps_line_endings():
    assert decode_utf8("\ufeffa\r\nb\rc\n".encode("utf-8"), "x") == "a\r\nb\rc\n"


def test_invalid_utf8_names_the_byte_offset():
    raw = "héllo".encode("utf-8") + b"\xff rest"
    with pytest.raises(DataError, match=r"byte offset 6"):
        decode_utf8(raw, "f.txt")


def test_vocab_is_sorted_code_points_one_per_character():
    text = "b a 日本 😀 e\u0301"  # CJK, an emoji (astral), a combining mark
    vocab = Vocab.from_text(text)
    assert vocab.chars == "".join(sorted(set(text)))
    assert "😀" in vocab.index and "\u0301" in vocab.index
    ids = vocab.encode(text)
    assert len(ids) == len(text)  # one id per code point
    assert vocab.decode(ids) == text
    assert ids.dtype == np.uint8


def test_id_dtype_grows_with_the_vocabulary():
    vocab = Vocab("".join(chr(0x4E00 + i) for i in range(300)))
    assert vocab.encode(vocab.chars).dtype == np.uint16


def test_encode_rejects_unknown_characters():
    vocab = Vocab.from_text("abc")
    assert vocab.unknown("abxyz") == ["x", "y", "z"]
    with pytest.raises(DataError, match="'x'"):
        vocab.encode("abx")


def test_splits_are_contiguous_and_cover_everything():
    ids = np.arange(1000)
    s = split_ids(ids, 0.1, 0.05)
    assert len(s.train) == 850 and len(s.val) == 100 and len(s.test) == 50
    assert np.array_equal(np.concatenate([s.train, s.val, s.test]), ids)
    s = split_ids(ids, 0.1, 0.0)
    assert len(s.test) == 0 and s.val[0] == 900


def test_stream_layout_rows_continue_across_batches():
    ids = np.arange(101)
    batcher = StreamBatcher(ids, batch_size=4, seq_len=5)
    assert batcher.stream_len == 25 and len(batcher) == 5
    x0, y0 = batcher.batch(0)
    x1, y1 = batcher.batch(1)
    assert x0.shape == (4, 5)
    # stream i holds ids [25i, 25i + 25); batch k is its columns [5k, 5k + 5)
    assert x0[2].tolist() == [50, 51, 52, 53, 54]
    assert x1[2].tolist() == [55, 56, 57, 58, 59]  # row 2 of batch 1 continues row 2 of batch 0
    assert np.array_equal(y0, x0 + 1)  # targets are the next character
    assert np.array_equal(y1[:, :-1], x1[:, 1:])
    seen = np.concatenate([np.concatenate([x for x, _ in batcher], axis=1)[i] for i in range(4)])
    assert np.array_equal(seen, np.arange(100))


def test_stream_layout_refuses_a_too_short_split():
    with pytest.raises(DataError, match="--batch-size"):
        StreamBatcher(np.arange(50), batch_size=4, seq_len=16)


def test_read_directory_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("BBB", encoding="utf-8")
    (tmp_path / "a.txt").write_text("AAA", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("CCC", encoding="utf-8")
    (tmp_path / "skip.md").write_text("MMM", encoding="utf-8")
    corpus = read_corpus(str(tmp_path))
    assert corpus.text == "AAABBBCCC"
    assert read_corpus(str(tmp_path), "*.md").text == "MMM"
    with pytest.raises(InputMissingError, match="no files matching"):
        read_corpus(str(tmp_path), "*.csv")


def test_missing_corpus(tmp_path):
    with pytest.raises(InputMissingError):
        read_corpus(str(tmp_path / "nope.txt"))


def test_corpus_hash_changes_with_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello", encoding="utf-8")
    first = read_corpus(str(path)).sha256
    path.write_text("hellp", encoding="utf-8")
    assert read_corpus(str(path)).sha256 != first


def test_demo_corpus_is_a_deterministic_few_megabytes():
    assert demo_files() == demo_files()
    corpus = read_corpus(None)
    assert corpus.source == DEMO_SOURCE
    assert 1_000_000 < len(corpus.text) < 10_000_000
    assert "def " in corpus.text


def test_equal_vocabularies_hash_alike():
    from charrnn.data.vocab import Vocab

    a, b, c = Vocab("abc"), Vocab("cba"), Vocab("abd")
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert {a: 1}[b] == 1 and len({a, b, c}) == 2
