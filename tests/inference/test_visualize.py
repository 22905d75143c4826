"""Seeing what the model learned: per-character surprisal and hidden states, neuron ranking, the three views."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn.inference.views import (
    PATTERNS,
    Trace,
    View,
    hidden_states,
    pattern_signal,
    render_digits,
    render_html,
    top_neurons,
    trace,
)
from conftest import assert_one_line_error, cli_env, run_cli


def _model(cell: str):
    import torch

    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=7, cell=cell, hidden_size=8, num_layers=2)).eval()


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_hidden_states_agree_with_forward(cell):
    import torch

    model = _model(cell)
    ids = torch.randint(0, 7, (2, 11), generator=torch.Generator().manual_seed(1))
    hidden, logits, state = hidden_states(model, ids)
    assert hidden.shape == (2, 2, 11, 8)  # L, B, T, H
    ref_logits, _, ref_state = model(ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
    top = hidden[-1, :, -1]  # the last layer at the last step is in the final state too
    torch.testing.assert_close(top, (ref_state[0] if cell == "lstm" else ref_state)[-1], rtol=1e-5, atol=1e-5)


def test_hidden_states_of_the_first_layer_follow_the_equation():
    import torch

    model = _model("tanh")
    ids = torch.tensor([[1, 4, 2, 6, 0]])
    hidden, _, _ = hidden_states(model, ids)
    h = torch.zeros(8)
    for t in range(5):  # h^1_t = tanh(W^1_hh h^1_{t-1} + W^1_xh x_t + b^1), W^1_xh x_t = embed[x_t]
        h = torch.tanh(model.w_hh[0] @ h + model.embed.weight[ids[0, t]] + model.bias[0])
        torch.testing.assert_close(hidden[0, 0, t], h, rtol=1e-5, atol=1e-5)


def test_surprisal_sums_to_the_eval_loss():
    from charrnn.inference.evaluation import score_ids

    model = _model("tanh")
    ids = np.array([1, 4, 2, 6, 0, 3, 3, 5, 1, 2], dtype=np.uint8)
    tr = trace(model, ids)
    assert math.isnan(tr.nats[0])  # the first character is context only
    assert np.all(tr.nats[1:] > 0)
    score = score_ids(model, ids, streams=1)
    assert math.isclose(float(np.sum(tr.nats[1:])), score.nats, rel_tol=1e-5)
    assert tr.hidden.shape == (2, 10, 8)


def test_patterns():
    text = 'a "bc" (d (e) f) g'
    assert pattern_signal("quotes", text).tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert pattern_signal("parens", text).tolist() == [0] * 7 + [1] * 9 + [0, 0]
    assert pattern_signal("line-position", "ab\ncd").tolist() == [0, 1, 2, 0, 1]
    assert set(PATTERNS) >= {"quotes", "parens"}


def test_top_neurons_finds_the_unit_that_tracks_the_pattern():
    text = 'say "hello there" and "bye" now, "ok"'
    signal = pattern_signal("quotes", text)
    rng = np.random.default_rng(0)
    hidden = rng.uniform(-1, 1, size=(2, len(text), 6))
    hidden[1, :, 4] = np.tanh(3 * (signal - 0.5)) + rng.normal(0, 0.05, len(text))  # the quote cell
    hidden[0, :, 2] = -hidden[1, :, 4]  # anti-correlated counts too
    ranked = top_neurons(Trace(np.zeros(len(text)), hidden), text, "quotes", count=3)
    assert {(ranked[0].layer, ranked[0].unit), (ranked[1].layer, ranked[1].unit)} == {(2, 4), (1, 2)}
    assert ranked[0].correlation > 0.95 or ranked[0].correlation < -0.95
    assert abs(ranked[2].correlation) < 0.9
    only_first = top_neurons(Trace(np.zeros(len(text)), hidden), text, "quotes", layer=1, count=1)
    assert (only_first[0].layer, only_first[0].unit) == (1, 2) and only_first[0].correlation < -0.95


def test_views_digits_and_html():
    view = View("ab\n<c", np.array([np.nan, 3.7, 12.0, 0.2, 8.0]), "surprisal", "t & t")
    assert render_digits(view) == "ab\n 3\n<c\n08\n"
    page = render_html(view)
    assert page.startswith("<!DOCTYPE html>") and "<title>t &amp; t</title>" in page
    assert "&lt;" in page and "background-color:#" in page
    assert "3.70 bits" in page


def _sample_text(tmp_path, tiny_run):
    from charrnn.store.checkpoint import load_checkpoint

    vocab = load_checkpoint(str(tiny_run / "latest.pt"))["vocab"]
    text = "The quick brown fox jumps over a lazy dog.\nThen sleeps in warm sun.\n"
    assert not set(text) - set(vocab)
    path = tmp_path / "sample.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_cli_show_without_colour_prints_the_digit_ruler(tiny_run, tmp_path):
    path, text = _sample_text(tmp_path, tiny_run)
    proc = run_cli("eval", tiny_run, path, "--show", env=cli_env(NO_COLOR="1", FORCE_COLOR="1"), check=0)
    out = proc.stdout.decode()
    assert "\x1b[" not in out  # NO_COLOR wins
    lines = out.split("\n")
    assert lines[0] == text.split("\n")[0]
    assert len(lines[1]) == len(lines[0]) and lines[1][0] == " " and lines[1][1:].strip().isdigit()
    assert "bits/char" in proc.stderr.decode()


def test_cli_show_in_colour(tiny_run, tmp_path):
    path, text = _sample_text(tmp_path, tiny_run)
    proc = run_cli("eval", tiny_run, path, "--show", env=cli_env(FORCE_COLOR="1"), check=0)
    out = proc.stdout.decode()
    assert "\x1b[" in out
    import re

    assert re.sub(r"\x1b\[[0-9;]*m", "", out) == text


def test_cli_neuron_html_page(tiny_run, tmp_path):
    path, text = _sample_text(tmp_path, tiny_run)
    page = tmp_path / "neuron.html"
    proc = run_cli("eval", tiny_run, path, "--neuron", "5", "--layer", "1", "--html", page, check=0)
    assert proc.stdout == b""
    html = page.read_text(encoding="utf-8")
    assert "layer 1 unit 5" in html
    assert html.count("background-color:#") == len(text) - text.count("\n")
    import re

    assert re.sub(r"<[^>]+>", "", html.split("<pre>")[1].split("</pre>")[0]) == text


def test_cli_top_neurons(tiny_run, tmp_path):
    path, _ = _sample_text(tmp_path, tiny_run)
    proc = run_cli("eval", tiny_run, path, "--top-neurons", "whitespace", "--top", "4", check=0)
    lines = proc.stdout.decode().strip().split("\n")
    assert lines[0].split() == ["rank", "layer", "unit", "correlation"]
    assert len(lines) == 5
    values = [abs(float(line.split()[3])) for line in lines[1:]]
    assert values == sorted(values, reverse=True) and values[0] > 0


@pytest.mark.parametrize("args, code, needle", [
    (["--neuron", "999"], 2, "--neuron must be between 0 and 31"),
    (["--neuron", "1", "--layer", "3"], 2, "--layer must be between 1 and 2"),
    (["--top-neurons", "sarcasm"], 2, "unknown pattern 'sarcasm'"),
    (["--top-neurons", "quotes"], 65, "never holds"),
    (["--show", "--json"], 2, "--json"),
    (["--show", "--neuron", "1"], 2, "--show and --neuron"),
])
def test_cli_view_mistakes(tiny_run, tmp_path, args, code, needle):
    path, _ = _sample_text(tmp_path, tiny_run)
    assert_one_line_error(run_cli("eval", tiny_run, path, *args), code, needle)
