"""The training loop: learning, clipping, the schedule, stopping rules, checkpoints and resume."""

import json
import math
import os
import signal

import pytest
import torch

import charrnn
from charrnn.store.checkpoint import load_checkpoint
from charrnn.config import TrainConfig, parse_duration
from charrnn.errors import CannotCreateError, DataError, Interrupted, UsageError
from charrnn.training.launch import clip_gradients, learning_rate

from conftest import make_corpus


def tiny(**overrides):
    values = dict(batch_size=4, seq_len=16, warmup_steps=5, eval_every=25, val_frac=0.1, test_frac=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def test_learns_a_tiny_corpus_to_low_loss(tmp_path):
    path = tmp_path / "abc.txt"
    path.write_text("abcdefgh\n" * 400, encoding="utf-8")  # perfectly predictable after one character
    result = charrnn.train(str(path), charrnn.ModelConfig(hidden_size=32, num_layers=1),
                           tiny(max_steps=150, lr=1e-2), run_dir=str(tmp_path / "run"), progress=False)
    assert result.step == 150
    assert result.best_val_loss < 0.1  # ln(9) = 2.2 nats for a uniform guess over the 9 characters
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] / 10


def test_clip_gradients_bounds_the_global_norm():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.full((3,), 3.0)
    params[1].grad = torch.full((4,), 4.0)
    before = math.sqrt(3 * 9 + 4 * 16)
    norm = clip_gradients(params, 1.0)
    assert norm.item() == pytest.approx(before)
    after = math.sqrt(sum((p.grad ** 2).sum().item() for p in params))
    assert after == pytest.approx(1.0, rel=1e-5)
    params[0].grad = torch.full((3,), 3.0)
    params[1].grad = torch.full((4,), 4.0)
    clip_gradients(params, 0)  # 0 disables clipping
    assert params[0].grad[0].item() == 3.0


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_frac=0.1)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 50, 0.5) == pytest.approx(0.55)
    assert learning_rate(cfg, 99, 1.0) == pytest.approx(0.1)


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("5m") == 300 and parse_duration("1h") == 3600 and parse_duration("1.5h") == 5400
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_time_budget_stops_training(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 20000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=1),
                           tiny(time_budget=1.5, eval_every=10_000), run_dir=str(tmp_path / "run"), progress=False)
    assert result.stopped_by == "time_budget"
    # the budget is wall time: start-up and the final validation and save fit in it, so training takes less (no
    # timing assertion beyond that: tests/training/test_validation_budget.py checks the rule with a fake clock)
    assert 0 < result.elapsed < 10 and result.wall >= result.elapsed
    assert result.last_val_loss is not None  # evaluated at the end


def test_epochs_limit(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=1),
                           tiny(epochs=2), run_dir=str(tmp_path / "run"), progress=False)
    # train split 2700 chars -> 4 streams of 674 -> 42 batches per epoch
    assert result.step == 84 and result.epoch == 2 and result.stopped_by == "epochs"


def test_checkpoint_round_trip_is_self_contained(tiny_run):
    path = tiny_run / "latest.pt"
    raw = torch.load(path, weights_only=True, map_location="cpu")  # plain values and tensors only
    assert raw["format"] == "charrnn-checkpoint"
    ckpt = load_checkpoint(str(path))
    assert ckpt["model_config"]["hidden_size"] == 32
    assert ckpt["progress"]["step"] == 40
    assert len(ckpt["vocab"]) == ckpt["model_config"]["vocab_size"]
    assert ckpt["hidden"].shape == (2, 4, 32)
    assert set(ckpt["rng"]) == {"torch"}  # Python's `random` state is no longer saved: nothing draws from it
    assert len(ckpt["corpus"]["sha256"]) == 64
    model = charrnn.CharRNN(charrnn.ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    assert (tiny_run / "best.pt").exists()


def _weights(path):
    return load_checkpoint(str(path))["model"]


def test_resume_continues_exactly(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 2000)  # 28 batches an epoch: the run crosses an epoch boundary
    model = charrnn.ModelConfig(hidden_size=16, num_layers=2, dropout=0.1)
    full = charrnn.train(str(corpus), model, tiny(max_steps=30, eval_every=10),
                         run_dir=str(tmp_path / "full"), progress=False)

    def interrupt_at_17(info):
        if info["step"] == 17:
            os.kill(os.getpid(), signal.SIGINT)  # handled as a flag: the loop saves after this step and stops

    with pytest.raises(Interrupted):
        charrnn.train(str(corpus), model, tiny(max_steps=30, eval_every=10),
                      run_dir=str(tmp_path / "part"), progress=False, on_step=interrupt_at_17)
    assert load_checkpoint(str(tmp_path / "part" / "latest.pt"))["progress"]["step"] == 17
    resumed = charrnn.train(None, None, None, resume=str(tmp_path / "part"), progress=False)
    assert resumed.step == 30 and resumed.epoch == 1
    a, b = _weights(full.latest), _weights(resumed.latest)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [(r["step"], r.get("loss"), r.get("val_loss"))
                      for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))]
    assert rows("full") == rows("part")


def test_resume_refuses_a_changed_architecture_or_corpus(tmp_path, tiny_run):
    with pytest.raises(UsageError, match="hidden-size"):
        charrnn.train(None, charrnn.ModelConfig(hidden_size=64), tiny(), resume=str(tiny_run),
                      explicit={"hidden_size"}, progress=False)
    other = make_corpus(tmp_path / "other.txt", 8000, seed=5)
    with pytest.raises(DataError, match="differs from the one this run was trained on"):
        charrnn.train(str(other), None, tiny(), resume=str(tiny_run), progress=False)


def test_refuses_to_overwrite_a_run_without_resume(tiny_run, tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 4000)
    with pytest.raises(CannotCreateError, match="--resume"):
        charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16), tiny(max_steps=1),
                      run_dir=str(tiny_run), progress=False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_other_cells_train_and_sample(tmp_path, cell):
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=2, cell=cell),
                           tiny(max_steps=10), run_dir=str(tmp_path / "run"), progress=False)
    text = charrnn.sample(result.latest, length=50, seed=1)[0]
    assert len(text) == 50


def test_precision_on_cpu_bf16_products_fp32_weights(tmp_path):
    from charrnn.model.precision import CPU_BF16_MIN_HIDDEN, cpu_supports_bf16

    corpus = make_corpus(tmp_path / "c.txt", 3000)
    narrow = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=8, num_layers=1), tiny(max_steps=2),
                           run_dir=str(tmp_path / "a"), progress=False)
    assert all(t.dtype == torch.float32 for t in load_checkpoint(narrow.latest)["model"].values())
    with pytest.raises(UsageError, match="--precision bf16 on CPU needs --kernel fused or auto"):
        charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=8, num_layers=1),
                      tiny(max_steps=2, precision="bf16", kernel="nn"), run_dir=str(tmp_path / "b"), progress=False)
    if not cpu_supports_bf16():
        with pytest.raises(UsageError, match="bf16 instructions"):
            charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=8, num_layers=1),
                          tiny(max_steps=2, precision="bf16"), run_dir=str(tmp_path / "c"), progress=False)
        return
    runs = {}
    for precision in ("bf16", "fp32"):
        runs[precision] = charrnn.train(
            str(corpus), charrnn.ModelConfig(hidden_size=CPU_BF16_MIN_HIDDEN, num_layers=2),
            tiny(max_steps=30, precision=precision, eval_every=30), run_dir=str(tmp_path / precision), progress=False)
    ckpts = {k: load_checkpoint(r.latest) for k, r in runs.items()}
    # the weights, the optimizer's moments and the carried state stay fp32 whatever the products' precision
    assert all(t.dtype == torch.float32 for t in ckpts["bf16"]["model"].values())
    moments = [v for st in ckpts["bf16"]["optimizer"]["state"].values() for k, v in st.items() if k != "step"]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    # bf16 products learn the same thing: the losses track fp32's closely, and they are not identical
    assert runs["bf16"].best_val_loss == pytest.approx(runs["fp32"].best_val_loss, abs=0.05)
    w16, w32 = ckpts["bf16"]["model"]["w_hh.0"], ckpts["fp32"]["model"]["w_hh.0"]
    assert not torch.equal(w16, w32) and torch.allclose(w16, w32, atol=0.02)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_train_under_cpu_bf16_autocast_with_fp32_weights(tmp_path, cell):
    from charrnn.model.precision import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 instructions: --precision auto stays fp32 and bf16 is refused")
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    runs = {}
    for precision in ("bf16", "fp32"):
        runs[precision] = charrnn.train(
            str(corpus), charrnn.ModelConfig(hidden_size=32, num_layers=2, cell=cell, dropout=0.0),
            tiny(max_steps=30, precision=precision, eval_every=30), run_dir=str(tmp_path / precision), progress=False)
    ckpts = {k: load_checkpoint(r.latest) for k, r in runs.items()}
    assert all(t.dtype == torch.float32 for t in ckpts["bf16"]["model"].values())
    assert ckpts["bf16"]["hidden"].dtype == torch.float32
    assert runs["bf16"].best_val_loss == pytest.approx(runs["fp32"].best_val_loss, abs=0.05)
    w16, w32 = ckpts["bf16"]["model"]["rnn.weight_hh_l0"], ckpts["fp32"]["model"]["rnn.weight_hh_l0"]
    assert not torch.equal(w16, w32)  # the products really ran in bf16
