"""Weight averaging (`--ema`): what a run validates, samples and saves for use is an exponential moving average of
the weights it trains.

At the n-th update (after the n-th optimizer step) each average moves toward its weight by 1 - d, with
d = min(decay, (1 + n) / (10 + n)), so that the first steps' random weights are forgotten quickly (the warm-up
TensorFlow's ExponentialMovingAverage uses). At decay 0.995 the average spans the last ~200 steps: late in a run,
where the learning rate still moves the weights back and forth across a valley, the average sits nearer its floor. On
tiny-shakespeare (2x512, 2,000 steps) it took 0.017 nats/char off the validation loss (benchmarks/README.md).

A checkpoint's "model" is the average (what `sample`, `eval` and `info` read, and what `best.pt` was chosen by);
"train_weights" holds the weights being trained and "progress"."ema_updates" the count n, so that a resumed run
continues both exactly.
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        n = self.updates
        weight = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))  # the share the newest weights get
        for avg, p in zip(self.shadow, self.params):
            avg.lerp_(p.detach(), weight)

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the weights and the averages in place, one tensor at a time (one tensor's copy extra)."""
        for p, avg in zip(self.params, self.shadow):
            kept = p.detach().clone()
            p.copy_(avg)
            avg.copy_(kept)

    @contextlib.contextmanager
    def applied(self):
        """Inside, the model holds the averages; the trained weights come back on the way out, exception or not."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state_dict(self) -> dict:
        """The averages, on the CPU, under the model's parameter names (a model's state_dict)."""
        return {name: avg.detach().cpu() for name, avg in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load(self, averages: dict, updates: int) -> None:
        for name, avg in zip(self.names, self.shadow):
            avg.copy_(averages[name])
        self.updates = updates
