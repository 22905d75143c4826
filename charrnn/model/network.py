"""CharRNN: a one-hot (lookup) input, stacked recurrent cells, dropout, and a linear head to vocabulary logits.

The seed's recurrence, per layer l and time t, with x^1_t the one-hot character:

    h^l_t = tanh(W^l_hh h^l_{t-1} + W^l_xh x^l_t + b^l),   x^{l+1}_t = dropout(h^l_t),   y_t = W_hy dropout(h^L_t) + b_y

W^1_xh x^1_t with a one-hot x is a column lookup, so layer 1's input weight is an embedding table of width H
(`self.embed`), with no GEMM. Softmax appears only in the loss and in sampling. Shapes: B batch, T time,
V vocabulary, H hidden, L layers. Inside, tensors are time-major (T, B, ...) so each step's slice is contiguous.

Hidden state is one tensor: (L, B, H) for tanh and GRU, (2, L, B, H) for LSTM (h then c).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, parse_recurrent_init
from .fused import tanh_stack_parts


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig, kernel: str = "auto"):
        super().__init__()
        config.validate()
        self.config = config
        # tanh only: "fused" (hand-written BPTT), "nn" (torch's RNN, cuDNN on CUDA), "auto" (fused on CPU)
        if kernel not in ("auto", "fused", "nn"):
            raise ValueError(f"kernel must be auto, fused or nn, not {kernel!r}")
        self.kernel = kernel
        self._fused = {"fused": True, "nn": False}.get(kernel)  # None: by the input's device, at each call
        # the fused tanh path's matrix-product dtype: None (the weights' own, fp32) or torch.bfloat16 / float16
        # (low-precision operands, fp32 accumulation; the weights, optimizer and returned state stay fp32)
        self.compute_dtype: Optional[torch.dtype] = None
        # run the recurrent core with autocast off (cuDNN under autocast is fp16 whatever dtype was asked for)
        self.core_outside_autocast = False
        # the fused tanh path's T-step loops compiled with numba (charrnn/model/compiled.py): None where it can run,
        # False for the torch loop (the same maths)
        self.jit: Optional[bool] = None
        self.plan = None  # the precision plan in use (charrnn.model.precision), once `use_precision` has set one
        self._cudnn_extras: dict = {}  # the nn tanh path's constant identity and zero biases, made once per device
        self._flat_ptrs: tuple = ()  # where the weights were when last laid out in one buffer for cuDNN
        V, H, L = config.vocab_size, config.hidden_size, config.num_layers
        self.embed = nn.Embedding(V, H)  # = W^1_xh: row c is W^1_xh times one-hot(c)
        if config.cell == "tanh":
            self.w_xh = nn.ParameterList([nn.Parameter(torch.empty(H, H)) for _ in range(L - 1)])  # layers 2..L
            self.w_hh = nn.ParameterList([nn.Parameter(torch.empty(H, H)) for _ in range(L)])
            self.bias = nn.ParameterList([nn.Parameter(torch.zeros(H)) for _ in range(L)])
        else:
            rnn_cls = nn.GRU if config.cell == "gru" else nn.LSTM
            self.rnn = rnn_cls(H, H, L, dropout=self.dropout_rate if L > 1 else 0.0)
        self.drop = nn.Dropout(self.dropout_rate)
        self.head = nn.Linear(H, V)  # W_hy, b_y
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.config.hidden_size
        bound = 1.0 / math.sqrt(H)
        nn.init.normal_(self.embed.weight, std=0.5)
        if self.config.cell == "tanh":
            for w in self.w_xh:
                nn.init.uniform_(w, -bound, bound)
            kind, gain = parse_recurrent_init(self.config.recurrent_init)
            for w in self.w_hh:
                if kind == "orthogonal":
                    nn.init.orthogonal_(w)
                elif kind == "identity":
                    nn.init.eye_(w)
                else:
                    nn.init.uniform_(w, -bound, bound)
                w.data.mul_(gain)
            for b in self.bias:
                nn.init.zeros_(b)

    def use_precision(self, plan) -> None:
        """Set the model up as a precision plan (charrnn.model.precision.Plan) says: the fused kernel's operand dtype
        and whether the recurrent core runs outside autocast. Training and the benchmarks both call this."""
        from .precision import torch_dtype

        self.plan = plan
        self.compute_dtype = torch_dtype(plan.fused_dtype)
        self.core_outside_autocast = plan.core_outside_autocast

    @property
    def dropout_rate(self) -> float:
        """The dropout in use: the configured rate, 0 while `--dropout auto` has not been decided yet."""
        return self.config.dropout or 0.0

    def set_dropout(self, p: float) -> None:
        """Change the dropout rate (`--dropout auto` decides it once the run's speed is known)."""
        self.config.dropout = p
        self.drop.p = p
        if self.config.cell != "tanh" and self.config.num_layers > 1:
            self.rnn.dropout = p

    # ------------------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        L, H = self.config.num_layers, self.config.hidden_size
        device = device or self.head.weight.device
        dtype = dtype or self.head.weight.dtype
        shape = (2, L, batch_size, H) if self.config.cell == "lstm" else (L, batch_size, H)
        return torch.zeros(shape, device=device, dtype=dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _use_fused(self, x: torch.Tensor) -> bool:
        return self._fused if self._fused is not None else x.device.type == "cpu"

    def forward(
        self,
        ids: torch.Tensor,
        state: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """ids (B, T) -> logits (B, T, V), mean cross-entropy (if targets given), final state."""
        B, T = ids.shape
        if state is None:
            state = self.init_state(B, ids.device)
        head_w, head_b, low = self.head.weight, self.head.bias, None
        if self.config.cell == "tanh" and self._use_fused(ids):
            # lookup in (W^1_xh + b^1): adding the bias to the V rows of the table is cheaper than to T*B rows
            table = self.embed.weight + self.bias[0]  # row c: W^1_xh x^1_t + b^1 for x^1_t = one-hot(c)
            if self.compute_dtype not in (None, head_w.dtype):
                # bf16 operands: each weight is cast once per call (autograd casts its gradient back to fp32);
                # the logits and the state come back in fp32, so the loss and the next call are fp32
                low = self.compute_dtype
                table, state, head_w, head_b = table.to(low), state.to(low), head_w.to(low), head_b.to(low)
            top, state = self._tanh_layers_fused(F.embedding(ids.t(), table), state, low)  # input: T, B, H
            top = self._head_dropout(top)
        else:
            with torch.autocast(ids.device.type, enabled=False) if self._core_outside(ids) else contextlib.nullcontext():
                top, state = self._torch_core(self.embed(ids.t()), state)  # input: W^1_xh x^1_t by lookup
            top = self.drop(top)
        logits = F.linear(top, head_w, head_b)  # T, B, V
        if low is not None:
            logits, state = logits.float(), state.float()
        loss = None
        if targets is not None:
            # in fp32 also under autocast (a no-op for fp32 logits)
            loss = F.cross_entropy(logits.reshape(T * B, -1).float(), targets.t().reshape(T * B).long())
        return logits.transpose(0, 1), loss, state

    def _core_outside(self, ids: torch.Tensor) -> bool:
        return self.core_outside_autocast and torch.is_autocast_enabled(ids.device.type)

    def _torch_core(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's kernels (cuDNN on CUDA): x (T, B, H) -> top layer's outputs (T, B, H), final state."""
        if self.config.cell == "tanh":
            return self._tanh_layers_nn(x, state)
        if self.config.cell == "gru":
            return self.rnn(x, state)
        top, (h, c) = self.rnn(x, (state[0], state[1]))
        return top, torch.stack((h, c))

    def _tanh_layers_fused(self, x: torch.Tensor, state: torch.Tensor, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, H) layer 1's pre-activation input W^1_xh x^1_t + b^1 (a lookup). All layers in one autograd
        node (`tanh_stack_parts`), so that layer l+1 can run beside layer l on another thread."""
        T, B, H = x.shape
        L = self.config.num_layers
        masks = None
        if self.training and self.dropout_rate > 0 and L > 1:
            # x^{l+1} = dropout(h^l) = h^l * mask^l: the masks are drawn up front, scaled by 1/(1-p) like nn.Dropout
            masks = self._dropout_mask((L - 1, T, B, H), x)
        w_hh, w_xh, bias = list(self.w_hh), list(self.w_xh), list(self.bias[1:])
        if dtype is not None:
            w_hh, w_xh, bias = ([p.to(dtype) for p in ps] for ps in (w_hh, w_xh, bias))
        top, _, last = tanh_stack_parts(x, state, w_hh, w_xh, bias, masks, jit=self.jit)
        return top, last

    def _dropout_mask(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """An inverted-dropout mask: 1/(1-p) with probability 1-p, else 0, in `like`'s dtype and device.

        On CPU the random bits come from numpy's PCG64 (16 bits per element), seeded by one draw from torch's
        generator: about 3x faster than torch's own dropout here (which made a 2x512 dropout run 40 % slower), and
        still reproducible from torch's RNG state, which checkpoints save."""
        p = self.dropout_rate
        if like.device.type != "cpu":
            return F.dropout(like.new_ones(shape), p, True)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        bits = np.frombuffer(np.random.default_rng(seed).bytes(2 * math.prod(shape)), dtype=np.uint16)
        keep = torch.from_numpy(bits.reshape(shape) >= round(p * 65536))
        return keep.to(like.dtype).mul_(1.0 / (1.0 - p))

    def _head_dropout(self, top: torch.Tensor) -> torch.Tensor:
        """Dropout before the head on the fused path (the same mask source as between the layers)."""
        if not self.training or self.dropout_rate <= 0:
            return top
        return top * self._dropout_mask(tuple(top.shape), top)

    def _tanh_layers_nn(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same maths through torch's RNN kernel (cuDNN on CUDA). Layer 1's input weight is the identity,
        because its input is already the looked-up column W^1_xh x^1_t; b_hh is zero (b^l is b_ih)."""
        H, L = self.config.hidden_size, self.config.num_layers
        key = (x.device, x.dtype)
        if key not in self._cudnn_extras:  # made once, not on every call
            self._cudnn_extras = {key: (torch.eye(H, device=x.device, dtype=x.dtype),
                                        [torch.zeros(H, device=x.device, dtype=x.dtype) for _ in range(L)])}
        eye, zeros = self._cudnn_extras[key]
        weights = []
        for layer in range(L):
            w_ih = eye if layer == 0 else self.w_xh[layer - 1]
            weights += [w_ih, self.w_hh[layer], self.bias[layer], zeros[layer]]
        if x.is_cuda and x.dtype == self.w_hh[0].dtype:
            self._flatten_for_cudnn(weights)
        dropout = self.dropout_rate if self.training else 0.0
        out, h_n = torch._VF.rnn_tanh(x, state.contiguous(), weights, True, L, dropout, self.training, False, False)
        return out, h_n

    def _flatten_for_cudnn(self, weights: list) -> None:
        """Make the weights views of one buffer in cuDNN's layout (as nn.RNN.flatten_parameters does), once per
        placement: otherwise cuDNN copies them into such a buffer, and the gradients back out, on every call."""
        ptrs = tuple(w.data_ptr() for w in weights)
        if ptrs == self._flat_ptrs or not torch._use_cudnn_rnn_flatten_weight():
            return
        import torch.backends.cudnn.rnn as cudnn_rnn

        H, L = self.config.hidden_size, self.config.num_layers
        with torch.cuda.device_of(weights[0]), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(weights, 4, H, cudnn_rnn.get_cudnn_mode("RNN_TANH"), H, 0, L, False,
                                            False)
        self._flat_ptrs = tuple(w.data_ptr() for w in weights)

    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step for generation: ids (B,) -> logits (B, V), new state. No autograd, no dropout."""
        x = self.embed.weight[ids]  # B, H
        if self.config.cell == "tanh":
            new = torch.empty_like(state)
            for layer in range(self.config.num_layers):
                if layer == 0:
                    pre = torch.addmm(x, state[0], self.w_hh[0].t()).add_(self.bias[0])
                else:
                    pre = torch.addmm(self.bias[layer], x, self.w_xh[layer - 1].t())
                    pre.addmm_(state[layer], self.w_hh[layer].t())
                torch.tanh(pre, out=new[layer])
                x = new[layer]
            state = new
            top = x
        elif self.config.cell == "gru":
            out, state = self.rnn(x.unsqueeze(0), state)
            top = out[0]
        else:
            out, (h, c) = self.rnn(x.unsqueeze(0), (state[0], state[1]))
            state = torch.stack((h, c))
            top = out[0]
        return self.head(top), state
