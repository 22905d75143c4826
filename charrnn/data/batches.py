"""The contiguous splits (train, then validation, then test) and the parallel-stream batcher for truncated BPTT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import DataError


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_ids(ids: np.ndarray, val_frac: float, test_frac: float) -> Splits:
    """Contiguous split: train is the first part, then val, then test."""
    n = len(ids)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    n_train = n - n_val - n_test
    return Splits(ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


class StreamBatcher:
    """Lays the training ids out as B parallel streams for stateful truncated BPTT.

    With ids a b c d e f g h i j k l m n o p q r s t u v w x y ... and B = 3 streams of S characters each::

        stream 0: a b c d e f g h | ...        batch 0 = columns [0, T) of every stream,
        stream 1: i j k l m n o p | ...        batch 1 = columns [T, 2T), and so on.
        stream 2: q r s t u v w x | ...

    Targets are the same layout shifted by one character. Row i of batch k+1 continues row i of batch k, which is
    what makes carrying the hidden state from one batch to the next correct (random windows would break that).
    Columns past the last whole window of T are dropped each epoch.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = (len(ids) - 1) // batch_size
        self.num_batches = self.stream_len // seq_len
        if self.num_batches < 1:
            need = batch_size * seq_len + 1
            raise DataError(
                f"the training split has {len(ids)} characters but one batch needs {need} "
                f"(--batch-size {batch_size} x --seq-len {seq_len} + 1): use a longer corpus or lower "
                f"--batch-size / --seq-len"
            )
        n = batch_size * self.stream_len
        self.inputs = ids[:n].reshape(batch_size, self.stream_len)  # B, S (a view: no copy, memmap-friendly)
        self.targets = ids[1 : n + 1].reshape(batch_size, self.stream_len)

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, k: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Batch k: inputs and targets of shape (B, T); `rows` selects a share of the streams (one DDP rank's)."""
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return np.ascontiguousarray(self.inputs[rows, cols]), np.ascontiguousarray(self.targets[rows, cols])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(self.num_batches):
            yield self.batch(k)
