"""eval: the numbers, the default split, and what it refuses."""

import json
import math

import pytest

import charrnn
from charrnn.store.checkpoint import load_checkpoint
from charrnn.errors import DataError
from charrnn.inference.evaluation import score_ids
from charrnn.model.runtime import build_model

from conftest import assert_one_line_error, run_cli
from reference import manual_nats


def test_score_carries_state_through_the_text(tiny_run):
    model, vocab = build_model(load_checkpoint(str(tiny_run / "latest.pt")))
    ids = vocab.encode("the quick brown fox jumps over the lazy dog. " * 20)
    score = score_ids(model, ids, streams=1, chunk=16)  # many chunks, state carried between them
    assert score.chars == len(ids) - 1
    assert score.nats == pytest.approx(manual_nats(model, ids), rel=1e-5)


def test_streams_score_every_character_once(tiny_run):
    model, vocab = build_model(load_checkpoint(str(tiny_run / "latest.pt")))
    ids = vocab.encode("a lazy dog sleeps. " * 11)
    for streams in (1, 3, 7, 500):
        score = score_ids(model, ids, streams=streams, chunk=8)
        assert score.chars == len(ids) - 1
    # 3 streams: each piece scored from a zero state, remainder as one more piece
    n = len(ids) - 1
    per = n // 3
    pieces = [ids[i * per : (i + 1) * per + 1] for i in range(3)] + [ids[3 * per :]]
    want = sum(manual_nats(model, p) for p in pieces if len(p) > 1)
    assert score_ids(model, ids, streams=3, chunk=8).nats == pytest.approx(want, rel=1e-5)


def test_eval_numbers_relate(tiny_run, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("the lazy dog sleeps in warm sun.\n" * 5, encoding="utf-8")
    result = charrnn.evaluate(str(tiny_run), str(text))
    assert result["chars"] == len(text.read_text()) - 1
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(result["nats_per_char"]))


def test_default_is_the_test_split(tiny_run):
    ckpt = load_checkpoint(str(tiny_run / "latest.pt"))
    result = charrnn.evaluate(str(tiny_run))
    assert result["text"] == "test split"
    assert result["chars"] == round(ckpt["corpus"]["chars"] * 0.1) - 1


def test_cli_json_is_the_only_stdout(tiny_run, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("the lazy dog.\n", encoding="utf-8")
    proc = run_cli("eval", tiny_run / "best.pt", text, "--json", check=0)
    result = json.loads(proc.stdout)
    assert {"chars", "nats_per_char", "bits_per_char", "perplexity"} <= set(result)
    assert result["chars"] == 13
    assert proc.stdout.decode().count("\n") == 1


def test_unknown_characters(tiny_run, tmp_path):
    text = tmp_path / "odd.txt"
    text.write_text("the dog ☃ sleeps ✓\n", encoding="utf-8")
    assert_one_line_error(run_cli("eval", tiny_run, text), 65, "'☃'", "'✓'", "--skip-unknown")
    proc = run_cli("eval", tiny_run, text, "--skip-unknown", "--json", check=0)
    assert json.loads(proc.stdout)["skipped_unknown"] == 2


def test_refuses_a_changed_corpus(tmp_path):
    from conftest import make_corpus

    corpus = make_corpus(tmp_path / "c.txt", 3000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=8, num_layers=1),
                           charrnn.TrainConfig(batch_size=2, seq_len=8, max_steps=2), run_dir=str(tmp_path / "r"),
                           progress=False)
    corpus.write_text(corpus.read_text() + "more", encoding="utf-8")
    with pytest.raises(DataError, match="changed since training"):
        charrnn.evaluate(result.latest)
