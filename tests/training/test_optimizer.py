"""charrnn's AdamW (charrnn.training.optimizer) against torch.optim.AdamW: the same weights bit for bit, the same
state_dict both ways, and no import of torch's compiler."""

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


def test_a_training_step_does_not_import_torchs_compiler():
    """torch.optim's first use imports torch._dynamo (about 1 s of start-up on a 2-core machine); charrnn's does not."""
    code = """
import sys
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.precision import plan_for
from charrnn.training.speeds import speed_keys, training_step
import torch
cfg = TrainConfig(batch_size=2, seq_len=8, precision="fp32")
configs, plans, _ = speed_keys(ModelConfig(vocab_size=20, hidden_size=16), cfg, torch.device("cpu"), plan_for, [(2, 16)])
step = training_step(configs[(2, 16)], cfg, torch.device("cpu"), plans[(2, 16)])
step(); step()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stdout
