"""AdamW, the optimizer of every run: the arithmetic of torch.optim.AdamW with foreach=True, in the same order (so the
same weights, bit for bit), and a state_dict of the same layout (checkpoints from either load into the other).

Why not torch's own: its first use imports torch._dynamo (the compiler, which charrnn never runs), about 1 s of a
60 s budget's start-up on a 2-core machine, and more at exit. This one is only the update: no closures, amsgrad,
maximize, capturable or fused variants, which charrnn does not use.
"""

from __future__ import annotations

from collections import defaultdict

import torch  # imported by make_optimizer only, when a run builds its model

# the group keys torch's AdamW keeps (and so writes into a state_dict): a checkpoint of ours loads into it
_TORCH_GROUP_KEYS = {"amsgrad": False, "maximize": False, "foreach": True, "capturable": False,
                     "differentiable": False, "fused": None, "decoupled_weight_decay": True}


class AdamW:
    """AdamW over param groups (each a dict with "params" and optionally "weight_decay", "lr"), decoupled weight
    decay, bias-corrected moments; `param_groups` holds lr, betas, eps and weight_decay per group, as torch's."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, **_TORCH_GROUP_KEYS}
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in params]
        self.state: dict = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def step(self) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                self._update(group)

    def _update(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        by_kind = {}  # (device, dtype) -> [params], as torch groups its foreach calls
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)  # on the CPU, as torch keeps it
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        for params in by_kind.values():
            grads = [p.grad for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            steps = [self.state[p]["step"] for p in params]
            torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
            if weight_decay != 0:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            counts = [step.item() for step in steps]
            step_size = [(lr / (1 - beta1 ** n)) * -1 for n in counts]
            correction2_sqrt = [(1 - beta2 ** n) ** 0.5 for n in counts]
            denominator = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denominator, correction2_sqrt)
            torch._foreach_add_(denominator, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominator, step_size)

    def state_dict(self) -> dict:
        """{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [group, params as indexes]}:
        torch's layout, indexes counted over the groups in order (the tensors themselves, not copies)."""
        index, groups = {}, []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})
        state = {index[id(p)]: dict(values) for p, values in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """A state_dict of this class or of torch.optim.AdamW with the same groups: the groups' settings and each
        parameter's moments (moved to its device and dtype; the step count stays a CPU float, as torch keeps it)."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("the optimizer state has other parameter groups than this model's")
        by_index = {}
        for s, group in zip(saved, self.param_groups):
            by_index.update(zip(s["params"], group["params"]))
        self.state = defaultdict(dict)
        for i, values in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: (v if k == "step" else v.to(device=p.device, dtype=p.dtype)) if hasattr(v, "to")
                             else v for k, v in values.items()}
        self.param_groups = [{**s, "params": group["params"]} for s, group in zip(saved, self.param_groups)]


# Newton-Schulz coefficients of the quintic iteration Muon uses (Keller Jordan's; torch.optim.Muon's defaults);
# 3 iterations, not torch's 5: 40 % fewer products, and at equal time better on English and C code
# (benchmarks/README.md, "What each step learns"; 2 iterations lost 0.04-0.07 nats at equal steps)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


class MuonAdamW(AdamW):
    """Muon for the groups marked "muon": True (the recurrent and input matrices), AdamW for the rest.

    Muon keeps a momentum of each matrix's gradient (Nesterov, 0.95) and steps along its orthogonalised form
    (Newton-Schulz iterations: about U V^T of the momentum's SVD), so that every direction of the matrix moves alike.
    The step is scaled to the RMS an AdamW step would have (0.2 * sqrt(max(rows, cols)), torch.optim.Muon's
    "match_rms_adamw") and by the group's "lr_scale"; weight decay is decoupled, lr * weight_decay per step as for
    AdamW. The iteration runs in the group's "ns_dtype" ("bf16" where the training products are bf16, as
    torch.optim.Muon always does; else the matrices' own fp32: bf16 products are far slower than fp32 ones on a
    CPU without bf16 instructions) for "ns_steps" iterations. Matrices of one shape are iterated together.
    """

    def step(self) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                if group.get("muon"):
                    self._muon(group)
                else:
                    self._update(group)

    def load_state_dict(self, state_dict: dict) -> None:
        """As AdamW's; the Newton-Schulz settings stay this machine's (a run saved on a bf16 CPU resumes in fp32 on
        one without bf16)."""
        here = [{k: group[k] for k in ("ns_steps", "ns_dtype") if k in group} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, settings in zip(self.param_groups, here):
            group.update(settings)

    def _muon(self, group: dict) -> None:
        momentum, lr, weight_decay = group["momentum"], group["lr"], group["weight_decay"]
        by_shape = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            by_shape.setdefault((p.shape, p.device, p.dtype), []).append(p)
        for (shape, _, _), params in by_shape.items():
            grads = [p.grad for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch.stack(grads).lerp_(torch.stack(buffers), momentum)  # Nesterov
            ns_dtype = torch.bfloat16 if group.get("ns_dtype") == "bf16" else updates.dtype
            orthogonal = orthogonalise(updates.to(ns_dtype), group.get("ns_steps", NS_STEPS)).to(updates.dtype)
            if weight_decay != 0:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            scale = lr * group["lr_scale"] * 0.2 * max(shape[0], shape[1]) ** 0.5
            torch._foreach_add_(params, list(orthogonal.unbind(0)), alpha=-scale)


def orthogonalise(m: "torch.Tensor", steps: int = NS_STEPS, eps: float = 1e-7) -> "torch.Tensor":
    """About U V^T for each matrix of the batch m (n, rows, cols) = U S V^T: the quintic Newton-Schulz iteration
    from m scaled to spectral norm at most 1. Five iterations bring its singular values to between about 0.7 and
    1.2; three raise the large ones as far and leave the smallest (under ~5 % of the largest) lower, which serves."""
    a, b, c = NS_COEFFICIENTS
    tall = m.size(1) > m.size(2)
    x = m.transpose(1, 2) if tall else m
    x = x / x.flatten(1).norm(dim=1).clamp(min=eps)[:, None, None]
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.transpose(1, 2) if tall else x
