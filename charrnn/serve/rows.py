"""The steppers serve's scheduler drives: rows of one batch, each computed independently of the others.

A seeded request must get the same text alone or beside any other requests, so a row's logits may not depend on
how many rows share the step or which. Three ways, by where the model runs:

- tanh on the CPU with numba (the usual case): `NumbaTanhRows`, one compiled call per step for all rows, in which
  a row's values depend on its own inputs alone: blocks of 4 rows and the rows left over give the same bytes
  (checked when it is made; every batch padded to whole blocks where not). See _rowkernels.py for why a BLAS call
  cannot promise that.
- any other cell on the CPU, or tanh without numba: `PerRowRows` steps each row on its own, always in the shape of
  a batch of one (the same computation for a row whoever else is active).
- CUDA (or MPS): `PaddedRows` steps the whole capacity every time, active or not, so the shape of every product
  is fixed and a row's result cannot depend on how many rows are in use.

Every stepper has rows 0..capacity-1; the scheduler keeps its active rows in 0..B-1 (moving the last row into a
freed one) and calls `step(ids)` with B ids; `reset(row)` zeroes a row's state, `move(src, dst)` copies one, and
`load(model)` takes new weights of the same shape (the states are kept).
"""

from __future__ import annotations

import time

import numpy as np


def make_rows(model, capacity: int, device):
    """The stepper for `model` on `device` (a torch.device) with room for `capacity` rows."""
    if device.type != "cpu":
        return PaddedRows(model, capacity, device)
    if model.config.cell == "tanh":
        from ..model import compiled

        if compiled.available():
            try:
                rows = NumbaTanhRows(model, capacity)
                rows.step(np.zeros(1, np.int64))  # compiles here (or loads numba's cache), once per process
                rows.reset(0)
                return rows
            except Exception:  # numba failing on this platform (e.g. no cache directory it can use): the slow way
                pass
    return PerRowRows(model, capacity)


class NumbaTanhRows:
    parallel_from = 8  # rows from which the blocks of 4 rows may be shared among numba's threads ...
    parallel_hidden = 256  # ... in a model this wide or wider: below it a step is a few microseconds of work, less
    # than waking the threads costs (2x32, 16 rows, on a busy 2-core machine: 3 ms a step shared, 0.16 ms not)
    explore_every = 64  # steps with that many rows: one of them runs the kernel not in favour, to time it again

    def __init__(self, model, capacity: int):
        from . import _rowkernels

        self.kernels = _rowkernels
        self.capacity = capacity
        self.load(model)
        L, H, V = self.w_hh.shape[0], self.w_hh.shape[1], self.head.shape[0]
        # a block of 4 rows and a row alone must give the same bytes (_rowkernels.py); where they do not, every
        # batch is padded to whole blocks (the rows past B compute what nobody reads)
        self.padded = not _rowkernels.paths_agree([(H, H), (V, H)])
        room = -(-capacity // _rowkernels.ROWS) * _rowkernels.ROWS
        self.ids = np.zeros(room, np.int64)
        self.state = np.zeros((L, room, H), np.float32)
        self.pre = np.zeros((room, H), np.float32)
        self.logits = np.zeros((room, V), np.float32)
        self.per_row = [0.0, 0.0]  # seconds per row, a moving average, of the serial kernel [0] and the shared [1]
        self.big_steps = 0

    def load(self, model) -> None:
        import torch

        def arr(t):
            return np.ascontiguousarray(t.detach().cpu().float().numpy())

        with torch.no_grad():
            H = model.config.hidden_size
            self.table = arr(model.embed.weight + model.bias[0])  # V, H: W^1_xh + b^1
            self.w_hh = np.stack([arr(w) for w in model.w_hh])  # L, H, H (row j: output j's weights)
            self.w_xh = (np.stack([arr(w) for w in model.w_xh]) if len(model.w_xh)
                         else np.zeros((1, H, H), np.float32))  # numba needs an array even for one layer
            self.bias = np.stack([arr(b) for b in model.bias])  # L, H
            self.head = arr(model.head.weight)  # V, H
            self.head_b = arr(model.head.bias)

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Logits of rows 0..B-1. From parallel_from rows of a wide model, the serial kernel or the one shared among
        numba's threads, whichever has been faster per row lately (timed as it runs, the other one tried every
        explore_every steps): on a busy machine waking the threads can cost more than it saves. Both kernels give
        the same bytes (each element's operations are the same), so the choice changes the time only."""
        B = len(ids)
        n = -(-B // self.kernels.ROWS) * self.kernels.ROWS if self.padded else B
        self.ids[:B] = ids
        args = (self.ids[:n], self.table, self.w_xh, self.bias, self.w_hh, self.head, self.head_b, self.state,
                self.pre, self.logits)
        if B < self.parallel_from or self.state.shape[2] < self.parallel_hidden:
            self.kernels.tanh_step(*args)
            return self.logits[:B]
        self.big_steps += 1
        shared = int(self.per_row[1] <= self.per_row[0])  # untimed (0.0) kernels go first
        if self.big_steps % self.explore_every == 0:
            shared = 1 - shared
        t0 = time.perf_counter()
        (self.kernels.tanh_step_parallel if shared else self.kernels.tanh_step)(*args)
        took, was = (time.perf_counter() - t0) / B, self.per_row[shared]
        # a time under half the average replaces it: one slow call (the first, compiling) must not keep a kernel out
        self.per_row[shared] = took if was == 0.0 or took < was / 2 else 0.8 * was + 0.2 * took
        return self.logits[:B]

    def reset(self, row: int) -> None:
        self.state[:, row] = 0.0

    def move(self, src: int, dst: int) -> None:
        self.state[:, dst] = self.state[:, src]


class _TorchRows:
    """Rows of a torch state (the batch is dim -2: (L, B, H), or (2, L, B, H) for an LSTM's h and c)."""

    def __init__(self, model, capacity: int, device):
        import torch

        self.torch, self.device, self.capacity = torch, device, capacity
        self.model = model.to(device).eval()
        self.state = model.init_state(capacity, device=device)

    def load(self, model) -> None:
        self.model.load_state_dict(model.state_dict())

    def reset(self, row: int) -> None:
        self.state[..., row, :] = 0.0

    def move(self, src: int, dst: int) -> None:
        self.state[..., dst, :] = self.state[..., src, :]


class PerRowRows(_TorchRows):
    def __init__(self, model, capacity: int, device=None):
        import torch

        super().__init__(model, capacity, device or torch.device("cpu"))
        self.logits = None

    def step(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        B = len(ids)
        if self.logits is None:
            self.logits = np.zeros((self.capacity, self.model.config.vocab_size), np.float32)
        with torch.inference_mode():
            t = torch.from_numpy(ids)
            for i in range(B):  # one row at a time, always a batch of one: the same computation whoever else runs
                logits, new = self.model.step(t[i : i + 1], self.state[..., i : i + 1, :])
                self.state[..., i : i + 1, :] = new
                self.logits[i] = logits[0].numpy()
        return self.logits[:B]


class PaddedRows(_TorchRows):
    def step(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        B = len(ids)
        padded = np.zeros(self.capacity, np.int64)
        padded[:B] = ids
        with torch.inference_mode():  # every row, active or not: a fixed shape for every product
            logits, self.state = self.model.step(torch.from_numpy(padded).to(self.device), self.state)
            return logits[:B].float().cpu().numpy()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The model's log probabilities (temperature 1), float64, row by row."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def logprob_entry(row: np.ndarray, c: int, n: int, chars) -> tuple:
    """(the log probability of id c, {char: log probability} of the n most likely) from a row of log probabilities."""
    top = {}
    if n > 0:
        for t in np.argsort(-row, kind="stable")[:n].tolist():
            top[chars[t]] = float(row[t])
    return float(row[c]), top
