"""Training speed: charrnn's fused tanh RNN against stock torch.nn.RNN, interleaved in one process.

The baseline ("stock nn.RNN") is what a user would write with torch's own modules for the same model:

    nn.Embedding(V, H) -> nn.RNN(H, H, L, nonlinearity="tanh") -> nn.Linear(H, V)

trained with the same loop as charrnn (AdamW foreach, weight decay on matrices, clip_grad_norm_ foreach,
F.cross_entropy, hidden state carried and detached, loss.item() every step), the same B, T, H, L, V and dropout 0.
Its layer 1 does a GEMM on the embedding (nn.RNN has no lookup input); that is part of what is being compared.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class StockRNN(nn.Module):
    """autocast=True: the same model under torch.autocast("cpu", bfloat16), the stock way to get bf16 products."""

    def __init__(self, V: int, H: int, L: int, autocast: bool = False):
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.rnn = nn.RNN(H, H, L, nonlinearity="tanh")
        self.head = nn.Linear(H, V)
        self.autocast = autocast

    def forward(self, ids, state, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            x = self.embed(ids.t())  # T, B, H
            out, state = self.rnn(x, state)
            logits = self.head(out)  # T, B, V
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.t().reshape(-1))
        return logits, loss, state.float()

    def init_state(self, B):
        return torch.zeros(self.rnn.num_layers, B, self.rnn.hidden_size)


def make_charrnn(V, H, L, kernel="auto", precision="auto", device="cpu", cell="tanh"):
    """charrnn's model as `charrnn train --kernel KERNEL --precision PRECISION` sets it up on this device (the same
    precision policy, charrnn.model.precision.plan_for). Returns the model; its `.plan` says what runs in which dtype."""
    import torch

    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN
    from charrnn.model.precision import plan_for

    device = torch.device(device)
    config = ModelConfig(vocab_size=V, hidden_size=H, num_layers=L, cell=cell)
    plan = plan_for(device, cell, H, precision, kernel)
    model = CharRNN(config, kernel=plan.kernel).to(device)
    model.use_precision(plan)
    return model


def make_optimizer(model):
    from charrnn.training.launch import make_optimizer as charrnn_optimizer

    return charrnn_optimizer(model, lr=2e-3, betas=(0.9, 0.99), weight_decay=0.01)


class Trainer:
    """One model, its optimizer, a fixed random batch stream; `run(n)` times n training steps."""

    def __init__(self, model, V, B, T, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.model, self.B, self.T = model, B, T
        self.opt = make_optimizer(model)
        self.data = torch.randint(0, V, (B, T * 4 + 1), generator=g)
        self.state = model.init_state(B)
        self.k = 0

    def step(self):
        cols = slice((self.k % 4) * self.T, (self.k % 4 + 1) * self.T)
        self.k += 1
        x = self.data[:, cols]
        y = self.data[:, cols.start + 1 : cols.stop + 1]
        state = self.state.detach()
        _, loss, self.state = self.model(x, state, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        loss.item()
        self.opt.step()

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return self.B * self.T * steps / (time.perf_counter() - t0)


def useful_flops_per_char(H: int, L: int, V: int) -> float:
    """Forward + backward FLOPs of the model's matrix products per character: 6 * [(2L-1) H^2 + H V]."""
    return 6.0 * ((2 * L - 1) * H * H + H * V)


def sgemm_peak(n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / min(times)


def compare(H, L, V=65, B=64, T=128, rounds=5, steps=None, contenders=None, round_seconds=2.0):
    """Interleave the contenders (A B A B ...) for `rounds` rounds; return median chars/s of each."""
    torch.manual_seed(0)
    if contenders is None:
        contenders = {"charrnn": make_charrnn(V, H, L), "nn.RNN": StockRNN(V, H, L)}
    trainers = {name: Trainer(m, V, B, T) for name, m in contenders.items()}
    slowest = 0.0
    for tr in trainers.values():
        tr.run(1)  # warm-up: allocator, first-call costs
        slowest = max(slowest, B * T / tr.run(1))
    steps = steps or max(2, round(round_seconds / slowest))  # each round about round_seconds for the slower one
    rates = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, tr in trainers.items():
            rates[name].append(tr.run(steps))
    return {name: statistics.median(r) for name, r in rates.items()}, {n: r for n, r in rates.items()}, steps


if __name__ == "__main__":
    import sys

    for spec in sys.argv[1:] or ["2x512"]:
        L, H = map(int, spec.split("x"))
        med, raw, steps = compare(H, L)
        print(spec, steps, {k: round(v) for k, v in med.items()}, round(med["charrnn"] / med["nn.RNN"], 2), os.getloadavg())
