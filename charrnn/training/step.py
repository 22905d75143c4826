"""One training step's machinery: the model in its precision, its optimizer (Muon and AdamW, or AdamW: --optimizer)
with a loss scaler where fp16 needs one,
--ema's weight average; the batch onto the device, forward, loss, backward, the gradients averaged across ranks
and clipped, the optimizer step."""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("charrnn")


def clip_gradients(parameters, max_norm: float):
    """Scale gradients so their global L2 norm is at most max_norm (0 disables); returns the norm before."""
    import torch

    limit = max_norm if max_norm > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(list(parameters), limit, foreach=True)


# --optimizer muon: the recurrent and input matrices' learning rate is --lr times this (benchmarks/README.md,
# "What each step learns": 2 beat 1 and 4 on C at 500 steps and on English in 60 s; 4 won English at 500 steps)
MUON_LR_SCALE = 2.0
MUON_MOMENTUM = 0.95
# the recurrent and input matrices: the tanh stack's, and GRU's and LSTM's (their gates stacked in one matrix each;
# Muon's quality was measured on tanh only)
MUON_MATRICES = ("w_hh.", "w_xh.", "rnn.weight_hh_l", "rnn.weight_ih_l")


def make_optimizer(model, lr: float, betas: tuple, weight_decay: float, kind: str = "adamw",
                   products: str = "fp32"):
    """kind "adamw": AdamW (optimizer.py: torch's arithmetic without its import of the compiler) with weight decay on
    the weight matrices only (biases and nothing else are decayed). kind "muon": Muon for the recurrent and input
    matrices (MUON_MATRICES), AdamW for the embedding, biases and head (optimizer.MuonAdamW); its Newton-Schulz
    products in bf16 where the model's are (`products`, the precision plan's core), else in fp32. ValueError for any
    other kind ("auto" is resolved before: config.resolve_optimizer)."""
    from . import optimizer
    from .optimizer import AdamW, MuonAdamW

    if kind not in ("adamw", "muon"):
        raise ValueError(f"no optimizer {kind!r}: adamw or muon")

    named = list(model.named_parameters())
    muon = [p for n, p in named if kind == "muon" and p.dim() == 2 and n.startswith(MUON_MATRICES)]
    chosen = {id(p) for p in muon}
    decay = [p for n, p in named if p.dim() >= 2 and id(p) not in chosen]
    no_decay = [p for n, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind != "muon":
        return AdamW(groups, lr=lr, betas=betas)
    return MuonAdamW([{"params": muon, "weight_decay": weight_decay, "muon": True, "lr_scale": MUON_LR_SCALE,
                       "momentum": MUON_MOMENTUM, "ns_steps": optimizer.NS_STEPS,
                       "ns_dtype": "bf16" if products == "bf16" else "fp32"}] + groups, lr=lr, betas=betas)


def loop_note(run) -> str:
    """Which loop steps the fused tanh kernel here: compiled (numba, charrnn/model/compiled.py) or torch's ops."""
    plan = run.plan
    if plan.kernel != "fused" or run.model_config.cell != "tanh":
        return ""
    if run.device.type == "cpu" and plan.fused_dtype is None:
        from ..model import compiled

        return "; tanh loops compiled (numba)" if compiled.available() else "; tanh loops in torch (no numba)"
    return ""


class Step:
    """The model (seeded, rank 0's weights on every rank), its optimizer, loss scaler and weight average."""

    def __init__(self, run):
        import torch

        from ..model.network import CharRNN
        from ..model.precision import torch_dtype

        cfg, self.device, self.dist = run.cfg, run.device, run.dist
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(run.model_config, kernel=run.plan.kernel).to(self.device)
        self.dist.broadcast_parameters(self.model)  # rank 0's weights everywhere (equal seeds need not suffice)
        self.model.use_precision(run.plan)
        log.info(f"precision: {run.plan.describe()}{loop_note(run)}")
        self.autocast = torch_dtype(run.plan.autocast)
        self.scaler = torch.amp.GradScaler(self.device.type) if run.plan.grad_scaler else None
        self.optimizer = make_optimizer(self.model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                                        cfg.optimizer, run.plan.core)
        log.info("optimizer: " + ("Muon (recurrent and input matrices) and AdamW (embedding, biases, head)"
                                  if cfg.optimizer == "muon" else "AdamW"))
        self.grad_clip = cfg.grad_clip
        self.average = None  # --ema: the weights validated, sampled and saved for use (training/averaging.py)
        if cfg.ema > 0:
            from .averaging import WeightAverage

            self.average = WeightAverage(self.model, cfg.ema)

    def restore(self, resumed: dict) -> None:
        """The weights, averages, optimizer and loss scaler of a resumed checkpoint."""
        trained = resumed.get("train_weights")  # saved with --ema: "model" holds the averages
        self.model.load_state_dict(resumed["model"] if trained is None else trained)
        if self.average is not None:  # a run saved without averages starts them from its weights
            self.average.load(resumed["model"], resumed["progress"].get("ema_updates", 0))
        self.optimizer.load_state_dict(resumed["optimizer"])
        if self.scaler is not None and resumed.get("grad_scaler"):
            self.scaler.load_state_dict(resumed["grad_scaler"])

    def to_device(self, x_np, y_np):
        import numpy as np
        import torch

        x, y = torch.from_numpy(x_np.astype(np.int64)), torch.from_numpy(y_np.astype(np.int64))
        if self.device.type == "cuda":  # page-locked host memory lets the copy to the GPU run asynchronously
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def forward_backward(self, x, y, state, on_loss=lambda loss: loss):
        """(loss, bad, the state after the window, the gradient norm before clipping): the loss a device tensor,
        bad a device bool (no host sync). `on_loss` sees the loss before backward (the fault hooks)."""
        import torch

        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            _, loss, state = self.model(x, state, y)
        loss = on_loss(loss)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.dist.average_gradients(self.model.parameters())  # a rank's NaN reaches every rank's gradients
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the clip and the check see the true gradients
        grad_norm = clip_gradients(self.model.parameters(), self.grad_clip)
        # with loss scaling an overflowed gradient is the scaler's business (it skips the step and lowers the
        # scale); a non-finite loss is ours
        finite = torch.isfinite(loss.detach())
        if self.scaler is None:
            finite = finite & torch.isfinite(grad_norm)
        return loss, ~finite, state.float(), grad_norm  # the carried state stays fp32 in every mode

    def optimizer_step(self) -> None:
        stepped = True
        if self.scaler is not None:
            # the scaler skips a step whose gradients overflowed and lowers its scale exactly then; --ema's average
            # must not move on a step the weights did not take (the step already waits for the scaler's check)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        if self.average is not None and stepped:
            self.average.update()

    def drop_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def averaged(self):
        """A context in which the model holds the weights a user gets (--ema's averages, else as trained)."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def weights(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
