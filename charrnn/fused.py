"""The tanh recurrence h_t = tanh(x_t + h_{t-1} W_hh^T) with a hand-written backward pass.

`x_t` already holds W_xh x_t + b for every step (one GEMM over all T*B rows, or a lookup for layer 1), so only the
recurrent part has to be stepped. Autograd on a per-step loop would also compute a small weight-gradient GEMM and
an HxH accumulation at every step; here backward steps only the recurrent gradient

    dz_t = (dL/dh_t + dh_t) * (1 - h_t^2),        dh_{t-1} = dz_t W_hh

and then forms dL/dW_hh = sum_t dz_t^T h_{t-1} as ONE GEMM over all T*B rows.
`tanh_recurrence_reference` is the same maths in plain autograd; tests prove the two agree.
"""

from __future__ import annotations

import torch


class TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]  # x: T, B, H;  h0: B, H;  w_hh: H, H
        x = x.contiguous()
        hs = torch.empty_like(x)  # T, B, H
        w_t = w_hh.t()
        h = h0
        for t in range(T):
            torch.addmm(x[t], h, w_t, out=hs[t])
            hs[t].tanh_()
            h = hs[t]
        ctx.save_for_backward(h0, w_hh, hs)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: torch.Tensor):
        h0, w_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape
        grad_hs = grad_hs.contiguous()
        dtanh = 1.0 - hs * hs  # T, B, H: tanh'(z_t) for every step at once
        dz = torch.empty_like(hs)  # T, B, H: dL/dz_t, z_t the pre-activation
        carry = torch.zeros_like(h0)  # dL/dh_t arriving from step t+1
        for t in range(T - 1, -1, -1):
            torch.add(grad_hs[t], carry, out=dz[t])
            dz[t].mul_(dtanh[t])
            carry = torch.mm(dz[t], w_hh)
        h_prev = torch.cat((h0.unsqueeze(0), hs[:-1]), dim=0)  # T, B, H: h_{t-1}
        grad_w = dz.view(T * B, H).t().mm(h_prev.view(T * B, H))  # one GEMM over all T*B rows
        grad_h0 = carry if ctx.needs_input_grad[1] else None
        return dz, grad_h0, grad_w


def tanh_recurrence(x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """All hidden states (T, B, H) of h_t = tanh(x_t + h_{t-1} W_hh^T), fast forward and backward."""
    return TanhRecurrence.apply(x, h0, w_hh)


def tanh_recurrence_reference(x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """The same recurrence written plainly, differentiated by autograd (readable and slow)."""
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = torch.tanh(x[t] + h @ w_hh.t())
        hs.append(h)
    return torch.stack(hs)
