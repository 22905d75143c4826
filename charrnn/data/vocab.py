"""The character vocabulary: one Unicode code point one token, the sorted set of a corpus's code points; ids in the
smallest unsigned numpy dtype that holds it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..vocab_size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"vocabulary of {vocab_size} characters is too large")


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class Vocab:
    """The sorted set of characters of a corpus; id i is the i-th character."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise DataError("vocabulary has repeated characters")
        self.chars = "".join(sorted(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._points = code_points(self.chars)
        self.dtype = id_dtype(max(1, len(self.chars)))

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls("".join(chr(c) for c in np.unique(code_points(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:  # equal vocabularies hash alike, so a Vocab can be a dict key or a set member
        return hash((Vocab, self.chars))

    def unknown(self, text: str) -> list[str]:
        """Characters of text that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> np.ndarray:
        """Text to ids (every character must be in the vocabulary; see `unknown`)."""
        points = code_points(text)
        ids = np.searchsorted(self._points, points)
        ids = np.minimum(ids, len(self._points) - 1)
        if len(points) and not np.array_equal(self._points[ids], points):
            missing = self.unknown(text)
            raise DataError(f"characters not in the vocabulary: {describe_chars(missing)}")
        return ids.astype(self.dtype)

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)


def describe_chars(chars: Sequence[str], limit: int = 12) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return shown + more
