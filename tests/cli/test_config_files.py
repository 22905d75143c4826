"""`charrnn train --config run.toml` and `--save-config`: keys, types, precedence, round trip."""

from __future__ import annotations

import dataclasses

import pytest

from charrnn.config import ModelConfig, TrainConfig
from charrnn.cli.configfile import apply_config, config_toml, read_config
from charrnn.errors import UsageError
from conftest import assert_one_line_error, run_cli


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_values_are_read_and_typed(tmp_path):
    path = _write(tmp_path / "run.toml", 'hidden_size = 48\nlr = 1\ntime_budget = "2m"\ncell = "gru"\nbeta2 = 0.95\n')
    values = read_config(str(path))
    assert values == {"hidden_size": 48, "lr": 1.0, "time_budget": 120.0, "cell": "gru", "beta2": 0.95}
    assert isinstance(values["lr"], float)


@pytest.mark.parametrize("text, needle", [
    ("hiden_size = 3\n", "unknown key 'hiden_size'"),
    ("hidden-size = 3\n", "did you mean hidden_size"),
    ("vocab_size = 3\n", "unknown key 'vocab_size'"),
    ('hidden_size = "big"\n', "hidden_size must be int"),
    ("max_steps = 1.5\n", "max_steps must be int"),
    ("hidden_size = \n", "not valid TOML"),
])
def test_bad_files_are_usage_errors_naming_the_key(tmp_path, text, needle):
    path = _write(tmp_path / "run.toml", text)
    with pytest.raises(UsageError, match=needle):
        read_config(str(path))


def test_command_line_wins_over_the_file():
    model, train = ModelConfig(), TrainConfig()
    apply_config(model, train, {"hidden_size": 48, "lr": 0.01, "num_layers": 3}, explicit={"hidden_size"})
    assert model.hidden_size == ModelConfig().hidden_size  # given on the command line: the file does not touch it
    assert train.lr == 0.01 and model.num_layers == 3


def test_saved_config_reads_back_to_the_same_configs(tmp_path):
    model = ModelConfig(cell="lstm", hidden_size=64, dropout=0.25)
    train = TrainConfig(lr=3e-4, max_steps=100, time_budget=90.0, glob="*.md")
    path = _write(tmp_path / "out.toml", config_toml(model, train))
    values = read_config(str(path))
    model2, train2 = apply_config(ModelConfig(), TrainConfig(), values, explicit=set())
    assert dataclasses.asdict(model2) == dataclasses.asdict(model)
    assert dataclasses.asdict(train2) == dataclasses.asdict(train)


def test_cli_precedence_defaults_file_options(tmp_path):
    config = _write(tmp_path / "run.toml", "hidden_size = 48\nnum_layers = 3\nlr = 0.005\n")
    out = tmp_path / "effective.toml"
    proc = run_cli("train", "--config", config, "--hidden-size", "16", "--save-config", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    values = read_config(str(out))
    assert values["hidden_size"] == 16  # command line beats the file
    assert values["num_layers"] == 3 and values["lr"] == 0.005  # the file beats the defaults
    assert values["seq_len"] == TrainConfig().seq_len  # defaults fill the rest
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())  # no training


def test_cli_unknown_key_exits_2_naming_it(tmp_path):
    config = _write(tmp_path / "run.toml", "hidden_size = 48\nlearning_rate = 0.1\n")
    proc = run_cli("train", "--config", config, cwd=tmp_path)
    assert_one_line_error(proc, 2, "learning_rate", str(config))


def test_cli_missing_config_exits_66(tmp_path):
    assert_one_line_error(run_cli("train", "--config", tmp_path / "nope.toml", cwd=tmp_path), 66, "nope.toml")


def test_cli_trains_with_the_file(tmp_path, corpus):
    config = _write(tmp_path / "run.toml", "hidden_size = 24\nmax_steps = 3\neval_every = 3\nbeta1 = 0.8\n")
    args = ["--num-layers", "2", "--batch-size", "4", "--seq-len", "16", "--warmup-steps", "5"]  # TINY less its size
    proc = run_cli("train", corpus, "--config", config, "--run-dir", tmp_path / "run", "--quiet", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    import torch

    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["model_config"]["hidden_size"] == 24
    assert ckpt["train_config"]["beta1"] == 0.8
    assert ckpt["progress"]["step"] == 3
