"""The plain equations the tests hold the fast code to, in one place: readable, slow, differentiated by autograd.

- `explicit_tanh_rnn`: the whole tanh CharRNN, one time step and one layer at a time, with one-hot inputs.
- `tanh_stack_reference`: the stack of tanh layers that `charrnn.model.fused.TanhStack` computes with its hand-written
  backward pass (and `tanh_recurrence_reference`, one such layer).
- `filter_logits`: temperature, top-k and top-p as masks on torch logits; `charrnn.inference.sampling.pick` draws from the
  same distribution with numpy.
"""

from __future__ import annotations

from typing import Optional

import torch


__all__ = ["explicit_tanh_rnn", "filter_logits", "tanh_recurrence_reference", "tanh_stack_reference"]


def explicit_tanh_rnn(model, ids: torch.Tensor, h0: torch.Tensor):
    """h^l_t = tanh(W^l_hh h^l_{t-1} + W^l_xh x^l_t + b^l) per layer and time, with x^1_t one-hot, then
    y_t = W_hy h^L_t + b_y, written out one time step at a time with explicit one-hot vectors (no dropout).
    model: a tanh `CharRNN`; ids (B, T) -> logits (B, T, V), last state (L, B, H)."""
    V, L = model.config.vocab_size, model.config.num_layers
    B, T = ids.shape
    w_xh_1 = model.embed.weight.t()  # H x V: column c is W^1_xh one-hot(c)
    h = [h0[layer].clone() for layer in range(L)]
    logits = []
    for t in range(T):
        x = torch.nn.functional.one_hot(ids[:, t], V).to(h0.dtype)  # B x V
        for layer in range(L):
            w_xh = w_xh_1 if layer == 0 else model.w_xh[layer - 1]
            h[layer] = torch.tanh(h[layer] @ model.w_hh[layer].t() + x @ w_xh.t() + model.bias[layer])
            x = h[layer]
        logits.append(x @ model.head.weight.t() + model.head.bias)
    return torch.stack(logits, dim=1), torch.stack(h)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Scale by temperature and mask everything outside the top-k / nucleus with -inf. logits: (N, V).

    top-k keeps the logits >= the k-th largest; top-p then keeps the smallest set of most likely characters whose
    probability reaches top_p."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def tanh_recurrence_reference(x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """One layer, h_t = tanh(x_t + h_{t-1} W_hh^T), written plainly and differentiated by autograd (readable and
    slow): the maths the tests hold `TanhStack` to."""
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = torch.tanh(x[t] + h @ w_hh.t())
        hs.append(h)
    return torch.stack(hs)


def tanh_stack_reference(x1, h0, w_hh, w_xh, b, masks=None):
    """The stack `tanh_stack_parts` computes, written plainly layer by layer and differentiated by autograd:
    every hidden state (L, T, B, H)."""
    x, out = x1, []
    for l in range(len(w_hh)):
        if l > 0:
            inp = out[-1] if masks is None else out[-1] * masks[l - 1]
            x = inp @ w_xh[l - 1].t() + b[l - 1]
        out.append(tanh_recurrence_reference(x, h0[l], w_hh[l]))
    return torch.stack(out)


def manual_nats(model, ids):
    """Cross-entropy of ids[1:] given ids[:-1], one stream, the whole text in one forward pass."""
    x = torch.tensor(list(ids[:-1]), dtype=torch.long)[None]
    y = torch.tensor(list(ids[1:]), dtype=torch.long)
    with torch.no_grad():
        logits, _, _ = model(x)
    return torch.nn.functional.cross_entropy(logits[0], y, reduction="sum").item()
