"""`charrnn` with Muon for the recurrent and input matrices (w_hh.*, w_xh.*) and AdamW for the rest (embedding,
biases, head): `python benchmarks/muon_train.py train CORPUS ...` takes the options of `charrnn train`.

An experiment for issue 28 ("what each step learns"), run by step_experiments.py; charrnn itself does not ship it.
torch.optim.Muon (torch >= 2.9) orthogonalises each matrix's momentum with 5 Newton-Schulz steps;
adjust_lr_fn="match_rms_adamw" scales its step so that the run's --lr and --weight-decay mean what they mean for
AdamW. MUON_LR_SCALE (environment, default 1) multiplies the Muon groups' learning rate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import charrnn.training.step as step  # noqa: E402

SCALE = float(os.environ.get("MUON_LR_SCALE", "1"))


class Pair:
    """Two optimizers stepped as one: param_groups is both lists (the schedule sets every group's lr)."""

    def __init__(self, muon, adamw):
        self.parts = (muon, adamw)
        self.muon_groups = list(muon.param_groups)
        self.param_groups = _ScaledGroups(muon.param_groups, adamw.param_groups)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, s in zip(self.parts, state["parts"]):
            part.load_state_dict(s)


class _ScaledGroups(list):
    """Iterating yields proxies whose lr assignment scales the Muon groups' lr by SCALE."""

    def __init__(self, muon_groups, adamw_groups):
        super().__init__([_Group(g, SCALE) for g in muon_groups] + [_Group(g, 1.0) for g in adamw_groups])


class _Group(dict):
    def __init__(self, group, scale):
        super().__init__()
        self.group, self.scale = group, scale

    def __setitem__(self, key, value):
        self.group[key] = value * self.scale if key == "lr" else value

    def __getitem__(self, key):
        return self.group[key]


def make_optimizer(model, lr: float, betas: tuple, weight_decay: float, kind: str = "adamw",
                   products: str = "fp32"):  # kind, products: ignored (torch's Muon, bf16 Newton-Schulz)
    import torch

    from charrnn.training.optimizer import AdamW

    named = list(model.named_parameters())
    matrices = [p for n, p in named if n.startswith(("w_hh.", "w_xh."))]
    others = [(n, p) for n, p in named if not n.startswith(("w_hh.", "w_xh."))]
    muon = torch.optim.Muon(matrices, lr=lr * SCALE, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    decay = [p for n, p in others if p.dim() >= 2]
    no_decay = [p for n, p in others if p.dim() < 2]
    adamw = AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                  lr=lr, betas=betas)
    return Pair(muon, adamw)


step.make_optimizer = make_optimizer

if __name__ == "__main__":
    from charrnn.cli.commands import main

    sys.argv[0] = "charrnn"
    main()
