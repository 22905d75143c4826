"""How far a corpus's validation text is from its training text, measured at start-up for the size choice.

A corpus whose validation split reads like its training text (a play, a novel, one language's manual pages) rewards
the sizes that learn most per step; one whose validation split is other text (the last packages of a code corpus,
another author, another year of logs) punishes them, as what they memorise does not carry over: on the Python
calibration corpus 2x512 stopped improving after 1,200 of its 1,500 steps in 300 s while 3x256 kept on
(benchmarks/README.md). The measure: an order-6 character model, counts with add-one smoothing, fit on the training
split's last WINDOW characters; its nats/char on the validation split's first VAL_CHARS characters, minus its
nats/char on PIECES pieces of the text it was fit on, spread over it. Six characters of context, not four: of the
eight corpora measured at 300 s, order 4 put one where 3x256 won (Python's characters 3-4 M, 0.422) below one where
2x512 won (French's characters 1-2 M, 0.439); order 6 orders them all (benchmarks/HISTORY.md). Numpy only (0.2 s for
a window of 900,000 characters); the same on every rank, as every rank holds the same splits.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

ORDER = 6  # characters of context
WINDOW = 900_000  # training characters fit: the calibration corpora's training splits (1 MB, 90 %)
VAL_CHARS = 100_000  # validation characters scored
PIECES = 40  # pieces of the fit text scored, spread over it, VAL_CHARS characters in all
MIN_CHARS = 10_000  # fewer training or validation characters than this: not measured
_MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier: contexts hash to one integer, wrapping


def _grams(ids: np.ndarray, n: int) -> np.ndarray:
    """Every run of n consecutive ids in `ids`, hashed to one uint64 each (len(ids) - n + 1 of them)."""
    count = len(ids) - n + 1
    out = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        out = out * _MIX + ids[j:j + count].astype(np.uint64) + np.uint64(1)
    return out


def _counts(grams: np.ndarray, keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """How often each of `keys` occurs among the sorted unique `grams` (whose counts are `seen`)."""
    at = np.minimum(np.searchsorted(grams, keys), len(grams) - 1)
    return np.where(grams[at] == keys, seen[at], 0)


def validation_shift(train: np.ndarray, val: np.ndarray, vocab_size: int) -> Optional[float]:
    """Nats/char by which the order-ORDER model of the training text predicts the validation text worse than the
    training text itself (module docstring); None where either split is shorter than MIN_CHARS."""
    if len(train) < MIN_CHARS or len(val) < MIN_CHARS:
        return None
    fit = np.asarray(train[-WINDOW:], dtype=np.int64)
    contexts, seen_contexts = np.unique(_grams(fit[:-1], ORDER), return_counts=True)
    grams, seen_grams = np.unique(_grams(fit, ORDER + 1), return_counts=True)

    def nats(text: np.ndarray) -> float:
        hits = _counts(grams, _grams(text, ORDER + 1), seen_grams)
        total = _counts(contexts, _grams(text[:-1], ORDER), seen_contexts)
        return float(-np.mean(np.log((hits + 1.0) / (total + float(vocab_size)))))

    scored = np.asarray(val[:VAL_CHARS], dtype=np.int64)
    piece = max(ORDER + 2, len(scored) // PIECES)
    starts = np.linspace(0, len(fit) - piece, PIECES).astype(np.int64)
    own = float(np.mean([nats(fit[s:s + piece]) for s in starts]))
    return round(nats(scored) - own, 4)
