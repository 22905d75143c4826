"""Defaults that depend on the run: `--dropout auto` (by passes over the training split) and `--recurrent-init`."""

import math

import pytest
import torch

import charrnn
from charrnn.store.checkpoint import load_checkpoint
from charrnn.config import (AUTO_DROPOUT_MAX, AUTO_DROPOUT_PER_PASS, ModelConfig, TrainConfig, auto_dropout,
                            parse_dropout, parse_recurrent_init)
from charrnn.cli.configfile import config_toml, read_config
from charrnn.errors import UsageError
from charrnn.model.network import CharRNN

from conftest import TINY, assert_one_line_error, make_corpus, run_cli


def test_auto_dropout_rises_with_the_passes_and_is_capped():
    assert auto_dropout(0) == 0.0 and auto_dropout(0.1) == 0.001
    assert auto_dropout(10) == pytest.approx(10 * AUTO_DROPOUT_PER_PASS)
    full = AUTO_DROPOUT_MAX / AUTO_DROPOUT_PER_PASS
    assert auto_dropout(full) == AUTO_DROPOUT_MAX
    assert auto_dropout(1000) == AUTO_DROPOUT_MAX
    values = [auto_dropout(p) for p in range(0, 60)]
    assert values == sorted(values)


def test_parse_dropout_and_recurrent_init():
    assert parse_dropout("auto") is None and parse_dropout("AUTO") is None
    assert parse_dropout("0.25") == 0.25
    with pytest.raises(UsageError, match="--dropout"):
        parse_dropout("lots")
    assert parse_recurrent_init("orthogonal:0.5") == ("orthogonal", 0.5)
    assert parse_recurrent_init("identity") == ("identity", 1.0)
    assert parse_recurrent_init("uniform:2") == ("uniform", 2.0)
    for bad in ("xavier", "orthogonal:x", "identity:-1", "orthogonal:nan"):
        with pytest.raises(UsageError, match="--recurrent-init"):
            parse_recurrent_init(bad)
    with pytest.raises(UsageError, match="--recurrent-init is for --cell tanh"):
        ModelConfig(cell="gru", recurrent_init="identity:0.5").validate()
    ModelConfig(cell="gru").validate()  # the default is fine with any cell


@pytest.mark.parametrize("spec", ["orthogonal:0.5", "identity:0.7", "uniform"])
def test_recurrent_init_shapes_w_hh(spec):
    torch.manual_seed(0)
    H = 24
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=H, num_layers=2, recurrent_init=spec))
    kind, gain = parse_recurrent_init(spec)
    for w in model.w_hh:
        w = w.detach().double()
        if kind == "orthogonal":
            assert torch.allclose(w @ w.t(), gain**2 * torch.eye(H, dtype=torch.float64), atol=1e-5)
        elif kind == "identity":
            assert torch.allclose(w, gain * torch.eye(H, dtype=torch.float64))
        else:
            assert w.abs().max() <= 1 / math.sqrt(H) + 1e-7 and w.std() > 0.5 / math.sqrt(3 * H)


def test_dropout_none_means_off_until_set():
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=8, num_layers=2))
    assert model.config.dropout is None and model.dropout_rate == 0.0
    model.set_dropout(0.3)
    assert model.dropout_rate == 0.3 and model.drop.p == 0.3
    gru = CharRNN(ModelConfig(vocab_size=5, hidden_size=8, num_layers=2, cell="gru"))
    gru.set_dropout(0.2)
    assert gru.rnn.dropout == 0.2 and gru.drop.p == 0.2


def _train(tmp_path, corpus, name, **train):
    values = dict(batch_size=4, seq_len=16, warmup_steps=5, eval_every=1000, val_frac=0.1, test_frac=0.0)
    values.update(train)
    result = charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=2), TrainConfig(**values),
                           run_dir=str(tmp_path / name), progress=False)
    return load_checkpoint(result.latest)


def test_auto_dropout_from_the_step_limit(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 2000)  # 1800 train chars: 28 steps of 4x16 per pass
    short = _train(tmp_path, corpus, "short", max_steps=28 * 3)  # 3 passes
    assert 0 < short["model_config"]["dropout"] <= auto_dropout(4)
    long = _train(tmp_path, corpus, "long", epochs=AUTO_DROPOUT_MAX / AUTO_DROPOUT_PER_PASS + 5)
    assert long["model_config"]["dropout"] == AUTO_DROPOUT_MAX
    explicit = charrnn.train(str(corpus), ModelConfig(hidden_size=16, num_layers=2, dropout=0.05),
                             TrainConfig(batch_size=4, seq_len=16, max_steps=10, val_frac=0.1, test_frac=0.0),
                             run_dir=str(tmp_path / "explicit"), progress=False)
    assert load_checkpoint(explicit.latest)["model_config"]["dropout"] == 0.05


def test_auto_dropout_with_a_time_budget_is_decided_from_the_speed_and_kept(tmp_path):
    """The probe times steps 5-25 and projects the steps the budget allows; with a step limit below that, the
    decision is the step limit's, at step 25, however fast or loaded the machine is."""
    corpus = make_corpus(tmp_path / "c.txt", 800)  # 720 train chars: 11 steps of 4x16 per pass
    run = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--val-frac", "0.1", "--test-frac", "0", "--time-budget", "1h",
                   "--max-steps", "40", "--run-dir", run, check=0)
    ckpt = load_checkpoint(str(run / "latest.pt"))
    assert ckpt["progress"]["step"] == 40
    decided = ckpt["model_config"]["dropout"]
    assert decided == auto_dropout(40 / 11) and decided > 0
    assert "(auto: about 3.6 passes" in proc.stderr.decode()
    info = run_cli("info", run / "latest.pt", check=0).stdout.decode()
    assert f"dropout {decided}" in info
    # resuming (more steps) keeps what was decided, also when auto is asked for again
    run_cli("train", "--resume", run, "--max-steps", "50", "--dropout", "auto", "-q", check=0)
    assert load_checkpoint(str(run / "latest.pt"))["model_config"]["dropout"] == decided


def test_dropout_option_errors_and_config_file(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 2000)
    proc = run_cli("train", corpus, *TINY, "--dropout", "some", "--max-steps", "2", "--run-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "--dropout")
    proc = run_cli("train", corpus, *TINY, "--cell", "lstm", "--recurrent-init", "identity", "--max-steps", "2",
                   "--run-dir", tmp_path / "r2")
    assert_one_line_error(proc, 2, "--recurrent-init")
    assert 'dropout = "auto"' in config_toml(ModelConfig(), TrainConfig())
    path = tmp_path / "run.toml"
    path.write_text('dropout = "auto"\nrecurrent_init = "identity:0.5"\n', encoding="utf-8")
    assert read_config(str(path)) == {"dropout": None, "recurrent_init": "identity:0.5"}
    path.write_text("dropout = 0.1\n", encoding="utf-8")
    assert read_config(str(path)) == {"dropout": 0.1}
