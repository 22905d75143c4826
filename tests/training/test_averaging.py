"""--ema: the moving average of the weights that a run validates, samples and saves (charrnn/training/averaging.py)."""

from __future__ import annotations

import pytest
import torch

import charrnn
from charrnn.training.averaging import WeightAverage
from charrnn.store.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.errors import UsageError
from charrnn.inference.evaluation import score_ids
from charrnn.store.info import checkpoint_info

from conftest import make_corpus


def test_the_average_warms_up_then_moves_by_one_minus_the_decay():
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    avg = WeightAverage(model, decay=0.5)
    expected, capped = start, 0
    for n in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the optimizer's step
        d = min(0.5, (1 + n) / (10 + n))  # 2/11 at the first update, the decay itself from the 8th on
        capped += d == 0.5
        expected = [e * d + p.detach() * (1 - d) for e, p in zip(expected, model.parameters())]
        avg.update()
        assert avg.updates == n
        for got, want in zip(avg.shadow, expected):
            torch.testing.assert_close(got, want)
    assert capped == 32 and set(avg.state_dict()) == set(model.state_dict())


def test_inside_applied_the_model_holds_the_averages_and_gets_its_weights_back_even_on_an_error():
    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(4.0)
    trained = model.weight.detach().clone()
    avg.update()
    average = avg.state_dict()["weight"].clone()
    with avg.applied():
        assert torch.equal(model.weight, average) and not torch.equal(model.weight, trained)
    assert torch.equal(model.weight, trained) and torch.equal(avg.state_dict()["weight"], average)
    with pytest.raises(RuntimeError, match="boom"):
        with avg.applied():
            raise RuntimeError("boom")
    assert torch.equal(model.weight, trained)


def _val_nats(path, text) -> float:
    """The loss a run's validation gives the checkpoint's "model" weights (its split, streams and windows)."""
    from charrnn.data.batches import split_ids
    from charrnn.model.runtime import build_model

    model, vocab = build_model(load_checkpoint(str(path)))
    val = split_ids(vocab.encode(text), 0.1, 0.0).val
    score = score_ids(model, val, streams=4, chunk=16, device=torch.device("cpu"))
    return score.nats / score.chars


def test_checkpoints_hold_the_average_as_the_model_and_the_trained_weights_to_resume(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    text = corpus.read_text(encoding="utf-8")
    cfg = dict(batch_size=4, seq_len=16, warmup_steps=5, eval_every=10, val_frac=0.1, test_frac=0.0, max_steps=20,
               val_chars=0)
    model = charrnn.ModelConfig(hidden_size=16, num_layers=2)
    run = charrnn.train(str(corpus), model, TrainConfig(ema=0.9, **cfg), run_dir=str(tmp_path / "ema"),
                        progress=False)
    ckpt = load_checkpoint(run.latest)
    assert ckpt["train_config"]["ema"] == 0.9 and ckpt["progress"]["ema_updates"] == 20
    assert ckpt["version"] == 2  # an older charrnn, which would resume from the averages, refuses it
    avg, trained = ckpt["model"], ckpt["train_weights"]
    assert set(avg) == set(trained) and any(not torch.equal(avg[k], trained[k]) for k in avg)
    # the validation loss the run logged is the average's (the weights `sample` and `eval` load)
    assert _val_nats(run.latest, text) == pytest.approx(run.last_val_loss, abs=1e-4)

    plain = charrnn.train(str(corpus), model, TrainConfig(ema=0.0, **cfg), run_dir=str(tmp_path / "plain"),
                          progress=False)
    ckpt = load_checkpoint(plain.latest)
    assert ckpt["train_weights"] is None and ckpt["progress"]["ema_updates"] == 0
    assert ckpt["version"] == 1  # nothing a version-1 reader would resume wrongly: every version reads it
    assert checkpoint_info(plain.latest)["weights"] == "as trained"
    assert _val_nats(plain.latest, text) == pytest.approx(plain.last_val_loss, abs=1e-4)
    # the same seed and batches: only what is saved for use differs
    assert run.last_val_loss != pytest.approx(plain.last_val_loss, abs=1e-6)


def test_resuming_a_run_saved_without_an_average_keeps_it_without_one_unless_asked(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    model = charrnn.ModelConfig(hidden_size=16, num_layers=1)
    cfg = dict(batch_size=4, seq_len=16, warmup_steps=5, eval_every=10, val_frac=0.1, test_frac=0.0)
    run_dir = tmp_path / "run"
    charrnn.train(str(corpus), model, TrainConfig(max_steps=10, **cfg), run_dir=str(run_dir), progress=False)
    path = run_dir / "latest.pt"
    old = load_checkpoint(str(path))
    del old["train_config"]["ema"]  # as an older version saved it
    old["train_weights"] = None
    from charrnn.store.checkpoint import save_checkpoint

    save_checkpoint({k: v for k, v in old.items() if k not in ("format", "version", "digest", "path")}, [str(path)])
    charrnn.train(None, None, TrainConfig(max_steps=15), resume=str(run_dir), progress=False, explicit={"max_steps"})
    again = load_checkpoint(str(path))
    assert again["train_config"]["ema"] == 0.0 and again["train_weights"] is None
    charrnn.train(None, None, TrainConfig(max_steps=20, ema=0.99), resume=str(run_dir), progress=False,
                  explicit={"max_steps", "ema"})
    last = load_checkpoint(str(path))
    assert last["train_config"]["ema"] == 0.99 and last["progress"]["ema_updates"] == 5
    assert last["train_weights"] is not None


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_an_ema_outside_zero_to_one_is_refused(bad):
    with pytest.raises(UsageError, match="--ema"):
        TrainConfig(ema=bad).validate()


def test_a_checkpoint_of_a_later_format_is_refused_in_one_line(tmp_path):
    from charrnn.store.checkpoint import save_checkpoint
    from charrnn.errors import DataError

    path = tmp_path / "x.pt"
    save_checkpoint({"model": {}, "train_weights": {}}, [str(path)])
    assert load_checkpoint(str(path))["version"] == 2
    state = torch.load(str(path), weights_only=True)
    state["version"] = 3
    torch.save(state, str(path))
    with pytest.raises(DataError, match="format version 3; this charrnn reads 1 and 2"):
        load_checkpoint(str(path))


def test_a_step_the_loss_scaler_skipped_does_not_move_the_average():
    """fp16 with a GradScaler: a step whose gradients overflowed is skipped by the scaler (the weights stay), and
    the average stays with them, its update count too. A real GradScaler on the CPU, a real overflow."""
    from types import SimpleNamespace

    from charrnn.training.step import Step as Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    me = SimpleNamespace(model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0),
                         average=WeightAverage(model, 0.9), skipped_in_a_row=0)

    def step(overflow: bool):
        optimizer.zero_grad(set_to_none=True)
        loss = model(torch.randn(2, 4)).square().sum()
        me.scaler.scale(loss).backward()
        if overflow:
            model.weight.grad[0, 0] = float("inf")
        me.scaler.unscale_(optimizer)
        Trainer.optimizer_step(me)

    step(overflow=False)
    assert me.average.updates == 1
    weights = [p.detach().clone() for p in model.parameters()]
    averages = [a.clone() for a in me.average.shadow]
    step(overflow=True)
    assert me.scaler.get_scale() == 512.0  # the scaler saw the overflow and skipped the step
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert me.average.updates == 1 and all(torch.equal(a, b) for a, b in zip(me.average.shadow, averages))
    step(overflow=False)  # the next good step moves both again
    assert me.average.updates == 2 and not all(torch.equal(a, b) for a, b in zip(me.average.shadow, averages))
