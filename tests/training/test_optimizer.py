"""charrnn's AdamW (charrnn.training.optimizer) against torch.optim.AdamW: the same weights bit for bit, the same
state_dict both ways, and no import of torch's compiler; --optimizer muon's step against its description."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from charrnn.training.optimizer import AdamW


def model_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    return model, copy.deepcopy(model)


def groups(model, decay=0.1):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": decay},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def train(model, optimizer, steps, seed, frozen_until=3):
    """Steps of a squared-output loss with a learning rate that changes, the last layer without gradients at first
    (no state until it has one)."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        x = torch.randn(4, 7, generator=g)
        optimizer.zero_grad(set_to_none=True)
        out = model[:3](x) if i < frozen_until else model(x)
        out.pow(2).sum().backward()
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (1 + i % 3)
        optimizer.step()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_the_weights_are_torchs_bit_for_bit_and_so_is_the_state_dict():
    mine, theirs = model_pair()
    ours = AdamW(groups(mine), lr=2e-3, betas=(0.9, 0.99))
    torchs = torch.optim.AdamW(groups(theirs), lr=2e-3, betas=(0.9, 0.99), foreach=True)
    train(mine, ours, 12, seed=1)
    train(theirs, torchs, 12, seed=1)
    assert same(mine, theirs)
    assert not same(mine, model_pair()[0])  # it trained
    a, b = ours.state_dict(), torchs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) == 6
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key in a["state"][i]:
            assert torch.equal(a["state"][i][key], b["state"][i][key]), (i, key)
            assert a["state"][i][key].dtype == b["state"][i][key].dtype


@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_a_checkpoints_optimizer_state_loads_either_way_and_training_goes_on_alike(direction):
    first, second = model_pair()
    make_ours = lambda m: AdamW(groups(m), lr=2e-3, betas=(0.9, 0.99))  # noqa: E731
    make_torchs = lambda m: torch.optim.AdamW(groups(m), lr=2e-3, betas=(0.9, 0.99), foreach=True)  # noqa: E731
    before, after = (make_torchs, make_ours) if direction == "torch to ours" else (make_ours, make_torchs)
    optimizer = before(first)
    train(first, optimizer, 5, seed=2)
    saved = copy.deepcopy(optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    resumed = after(second)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] != 2e-3  # the groups' settings came too
    train(first, optimizer, 4, seed=3, frozen_until=0)
    train(second, resumed, 4, seed=3, frozen_until=0)
    assert same(first, second)


def test_a_state_of_other_groups_is_refused():
    model, _ = model_pair()
    optimizer = AdamW(groups(model))
    train(model, optimizer, 4, seed=4)
    other = AdamW([{"params": list(model.parameters())}])
    with pytest.raises(ValueError, match="other parameter groups"):
        other.load_state_dict(optimizer.state_dict())


def test_zero_grad_empties_or_zeroes_the_gradients():
    model, _ = model_pair()
    optimizer = AdamW(model.parameters())
    model(torch.ones(1, 7)).sum().backward()
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_a_training_step_does_not_import_torchs_compiler(kind):
    """torch.optim's first use imports torch._dynamo (about 1 s of start-up on a 2-core machine); charrnn's
    optimizers (AdamW, and Muon with AdamW) do not."""
    code = f"""
import sys
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.precision import plan_for
from charrnn.training.speeds import speed_keys, training_step
import torch
cfg = TrainConfig(batch_size=2, seq_len=8, precision="fp32", optimizer="{kind}")
configs, plans, _ = speed_keys(ModelConfig(vocab_size=20, hidden_size=16), cfg, torch.device("cpu"), plan_for, [(2, 16)])
step = training_step(configs[(2, 16)], cfg, torch.device("cpu"), plans[(2, 16)])
step(); step()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stdout


# --optimizer muon: MuonAdamW (Muon for the recurrent and input matrices, AdamW for the rest)

def muon_model():
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=11, hidden_size=16, num_layers=2))


def char_steps(model, optimizer, steps, seed, lr=1e-2):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        data = torch.randint(0, 11, (3, 9), generator=g)
        optimizer.zero_grad(set_to_none=True)
        model(data[:, :-1], None, data[:, 1:])[1].backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 + i % 3)
        optimizer.step()


def reference_muon_step(p, grad, buf, lr, scale, weight_decay, momentum=0.95):
    """Muon's step written out for one matrix in float64, as its description reads."""
    from charrnn.training.optimizer import NS_STEPS

    buf = buf.double().lerp(grad.double(), 1 - momentum)
    update = grad.double().lerp(buf, momentum)
    x = update.T if update.shape[0] > update.shape[1] else update
    x = x / x.norm()
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.T if update.shape[0] > update.shape[1] else x
    new = p.double() * (1 - lr * weight_decay) - lr * scale * 0.2 * max(p.shape) ** 0.5 * x
    return new, buf


def test_muon_takes_the_recurrent_and_input_matrices_and_adamw_the_rest():
    from charrnn.training.step import MUON_LR_SCALE, make_optimizer

    model = muon_model()
    optimizer = make_optimizer(model, 3e-3, (0.9, 0.99), 0.01, "muon")
    names = {id(p): n for n, p in model.named_parameters()}
    muon, decay, no_decay = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert sorted(muon) == ["w_hh.0", "w_hh.1", "w_xh.0"]
    assert sorted(decay) == ["embed.weight", "head.weight"] and "bias.0" in no_decay
    assert optimizer.param_groups[0]["muon"] and optimizer.param_groups[0]["lr_scale"] == MUON_LR_SCALE
    plain = make_optimizer(model, 3e-3, (0.9, 0.99), 0.01)
    assert len(plain.param_groups) == 2 and not any(g.get("muon") for g in plain.param_groups)
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    for cell in ("gru", "lstm"):  # torch's nn.GRU / nn.LSTM: each layer's stacked input and recurrent matrices
        gated = CharRNN(ModelConfig(vocab_size=11, hidden_size=8, num_layers=2, cell=cell))
        names = {id(p): n for n, p in gated.named_parameters()}
        first = make_optimizer(gated, 3e-3, (0.9, 0.99), 0.01, "muon").param_groups[0]
        assert sorted(names[id(p)] for p in first["params"]) == [
            "rnn.weight_hh_l0", "rnn.weight_hh_l1", "rnn.weight_ih_l0", "rnn.weight_ih_l1"], cell


def test_a_muon_step_is_the_orthogonalised_nesterov_momentum_scaled_to_adamws_rms():
    from charrnn.training.step import make_optimizer

    model = muon_model()
    optimizer = make_optimizer(model, 1e-2, (0.9, 0.99), 0.1, "muon")
    matrix = dict(model.named_parameters())["w_hh.1"]
    char_steps(model, optimizer, 3, seed=5)  # momentum built up
    before = matrix.detach().clone()
    buf = optimizer.state[matrix]["momentum_buffer"].clone()
    g = torch.Generator().manual_seed(6)
    data = torch.randint(0, 11, (3, 9), generator=g)
    optimizer.zero_grad(set_to_none=True)
    model(data[:, :-1], None, data[:, 1:])[1].backward()
    grad = matrix.grad.clone()
    for group in optimizer.param_groups:
        group["lr"] = 2e-2
    optimizer.step()
    group = optimizer.param_groups[0]
    expected, expected_buf = reference_muon_step(before, grad, buf, 2e-2, group["lr_scale"], 0.1)
    assert torch.allclose(matrix.double(), expected, rtol=0, atol=1e-5), (matrix.double() - expected).abs().max()
    assert torch.allclose(optimizer.state[matrix]["momentum_buffer"].double(), expected_buf, atol=1e-7)
    assert (matrix - before).abs().max() > 1e-3  # it moved, by far more than the tolerance


def test_the_orthogonalised_matrix_keeps_the_directions_and_brings_the_singular_values_near_one():
    from charrnn.training.optimizer import NS_STEPS, orthogonalise

    g = torch.Generator().manual_seed(7)
    for n, rows, cols in [(4, 32, 32), (2, 48, 16), (2, 16, 48)]:
        k = min(rows, cols)
        u = torch.linalg.qr(torch.randn(n, rows, rows, generator=g))[0][:, :, :k]
        v = torch.linalg.qr(torch.randn(n, cols, cols, generator=g))[0][:, :, :k]
        spread = torch.logspace(-0.5, 1, k).flip(0)  # singular values 10 down to 0.3 (about 3 % of the norm)
        m = u @ torch.diag_embed(spread.expand(n, -1)) @ v.transpose(1, 2)
        for steps, low in ((5, 0.6), (NS_STEPS, 0.5)):  # torch.optim.Muon's count and charrnn's
            out = orthogonalise(m, steps)
            inner = u.transpose(1, 2) @ out @ v  # diagonal: the same singular vectors
            s = torch.diagonal(inner, dim1=1, dim2=2)
            assert out.shape == m.shape
            assert (inner - torch.diag_embed(s)).abs().max() < 1e-4
            assert s.min() > low and s.max() < 1.25, ((rows, cols), steps, s.min(), s.max())


def test_a_muon_checkpoints_state_resumes_to_the_same_weights_as_going_on():
    from charrnn.training.step import make_optimizer

    first, second = muon_model(), muon_model()
    optimizer = make_optimizer(first, 1e-2, (0.9, 0.99), 0.01, "muon")
    char_steps(first, optimizer, 4, seed=8)
    saved = copy.deepcopy(optimizer.state_dict())
    assert any("momentum_buffer" in s for s in saved["state"].values())
    second.load_state_dict(first.state_dict())
    resumed = make_optimizer(second, 1e-2, (0.9, 0.99), 0.01, "muon")
    resumed.load_state_dict(saved)
    char_steps(first, optimizer, 3, seed=9)
    char_steps(second, resumed, 3, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    adamw = make_optimizer(muon_model(), 1e-2, (0.9, 0.99), 0.01)
    with pytest.raises(ValueError, match="other parameter groups"):  # an AdamW run's state is not a Muon run's
        adamw.load_state_dict(saved)


def test_muons_newton_schulz_runs_in_bf16_where_the_products_are_and_a_resume_keeps_this_machines_choice():
    from charrnn.training.step import MUON_LR_SCALE, make_optimizer

    fp32, bf16 = muon_model(), muon_model()
    plain = make_optimizer(fp32, 1e-2, (0.9, 0.99), 0.01, "muon")
    low = make_optimizer(bf16, 1e-2, (0.9, 0.99), 0.01, "muon", products="bf16")
    assert plain.param_groups[0]["ns_dtype"] == "fp32" and low.param_groups[0]["ns_dtype"] == "bf16"
    char_steps(fp32, plain, 1, seed=3)
    char_steps(bf16, low, 1, seed=3)
    moved = [(a.detach() - b.detach()) for a, b in zip(muon_model().parameters(), fp32.parameters())]
    apart = [(a - b).abs().max() for a, b in zip(fp32.parameters(), bf16.parameters())]
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # the weights stay fp32
    # the same step to bf16's precision, but not bit for bit (the products did run in bf16)
    assert max(apart) < 0.05 * max(m.abs().max() for m in moved) and max(apart) > 0
    saved = low.state_dict()
    assert saved["param_groups"][0]["ns_dtype"] == "bf16"
    resumed = make_optimizer(muon_model(), 1e-2, (0.9, 0.99), 0.01, "muon")  # a CPU without bf16
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["ns_dtype"] == "fp32" and resumed.param_groups[0]["lr_scale"] == MUON_LR_SCALE


def test_the_default_optimizer_is_muon_for_tanh_and_adamw_for_the_gated_cells_and_resume_keeps_it(tmp_path):
    import charrnn
    from charrnn.config import TrainConfig
    from charrnn.store.checkpoint import load_checkpoint, save_checkpoint

    from conftest import make_corpus

    corpus = make_corpus(tmp_path / "c.txt", 3000)
    cfg = dict(batch_size=4, seq_len=16, warmup_steps=5, eval_every=10, val_frac=0.1, test_frac=0.0)
    assert TrainConfig().optimizer == "auto"
    chosen = {}
    for cell in ("tanh", "gru"):
        run_dir = tmp_path / cell
        charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=1, cell=cell),
                      TrainConfig(max_steps=4, **cfg), run_dir=str(run_dir), progress=False)
        saved = load_checkpoint(str(run_dir / "latest.pt"))
        groups = saved["optimizer"]["param_groups"]
        chosen[cell] = saved["train_config"]["optimizer"], any(g.get("muon") for g in groups)
    assert chosen == {"tanh": ("muon", True), "gru": ("adamw", False)}
    # resuming with the default ("auto", even typed) keeps what the run decided
    charrnn.train(None, None, TrainConfig(max_steps=6, optimizer="auto"), resume=str(tmp_path / "tanh"),
                  progress=False, explicit={"max_steps", "optimizer"})
    assert load_checkpoint(str(tmp_path / "tanh" / "latest.pt"))["train_config"]["optimizer"] == "muon"
    # a checkpoint from before --optimizer existed trained with AdamW and resumes with it
    run_dir = tmp_path / "old"
    charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=1), TrainConfig(
        max_steps=4, optimizer="adamw", **cfg), run_dir=str(run_dir), progress=False)
    old = load_checkpoint(str(run_dir / "latest.pt"))
    del old["train_config"]["optimizer"]  # as an older version saved it
    save_checkpoint({k: v for k, v in old.items() if k not in ("format", "version", "digest", "path")},
                    [str(run_dir / "latest.pt")])
    result = charrnn.train(None, None, TrainConfig(max_steps=6), resume=str(run_dir), progress=False,
                           explicit={"max_steps"})
    again = load_checkpoint(str(run_dir / "latest.pt"))
    assert result.step == 6 and again["train_config"]["optimizer"] == "adamw"
    assert not any(g.get("muon") for g in again["optimizer"]["param_groups"])


def test_an_unknown_optimizer_is_one_line_and_exit_2(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefgh " * 400)
    out = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--optimizer", "sgd",
                          "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == "charrnn: error: --optimizer must be auto, adamw or muon, not 'sgd'"
    assert not (tmp_path / "run").exists()


def test_an_unknown_optimizer_kind_is_refused_not_taken_for_adamw():
    from charrnn.training.step import make_optimizer

    for kind in ("auto", "sgd", "Muon"):
        with pytest.raises(ValueError, match="no optimizer"):
            make_optimizer(muon_model(), 1e-2, (0.9, 0.99), 0.01, kind)


def test_resuming_with_another_optimizer_named_is_refused_and_the_run_is_untouched(tmp_path):
    import charrnn
    from charrnn.config import TrainConfig
    from charrnn.errors import UsageError

    from conftest import make_corpus

    corpus = make_corpus(tmp_path / "c.txt", 3000)
    run_dir = tmp_path / "run"
    charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=16, num_layers=1), TrainConfig(
        max_steps=4, batch_size=4, seq_len=16, warmup_steps=0, eval_every=4, val_frac=0.1, test_frac=0.0),
        run_dir=str(run_dir), progress=False)  # auto: muon for tanh
    before = (run_dir / "latest.pt").read_bytes()
    with pytest.raises(UsageError, match="optimizer"):
        charrnn.train(None, None, TrainConfig(max_steps=8, optimizer="adamw"), resume=str(run_dir), progress=False,
                      explicit={"max_steps", "optimizer"})
    assert (run_dir / "latest.pt").read_bytes() == before


def test_the_speed_keys_name_the_optimizer_and_its_iterations(monkeypatch):
    """A Muon step costs more than AdamW's, and more with more Newton-Schulz iterations: each is timed on its own."""
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model.precision import plan_for
    from charrnn.training import optimizer
    from charrnn.training.speeds import speed_keys

    def key(kind, cell="tanh"):
        cfg = TrainConfig(optimizer=kind, precision="fp32")
        return speed_keys(ModelConfig(vocab_size=20, cell=cell), cfg, torch.device("cpu"), plan_for,
                          [(2, 16)])[2][(2, 16)]

    adamw, muon, auto = key("adamw"), key("muon"), key("auto")
    assert "optimizer" not in adamw and muon == auto and muon.startswith(adamw) and muon != adamw
    assert key("auto", "gru") == key("adamw", "gru")  # gated cells take AdamW
    monkeypatch.setattr(optimizer, "NS_STEPS", optimizer.NS_STEPS + 2)
    assert key("muon") not in (muon, adamw)
