"""How well a model predicts text: nats/char, bits/char and perplexity.

Every character after the first is scored, predicted from the characters before it (the first character is
context only). With one stream (the default of `charrnn eval`) the hidden state is carried through the whole
text from start to end, so each prediction sees all text before it, however long. With N streams the text is
cut into N contiguous pieces, each starting from a zero state, scored in parallel (faster, slightly pessimistic:
each piece starts cold); characters left over after N equal pieces are scored as one more piece. Either way each
character is scored exactly once. Validation during training uses the training batch size as N.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import DataError, UsageError

from ..store.metrics import LN2  # noqa: F401 (charrnn.inference.evaluation.LN2 is used elsewhere)


@dataclass
class Score:
    nats: float  # total negative log-likelihood in nats
    chars: int  # characters scored

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else float("nan")

    def as_dict(self) -> dict:
        npc = self.nats_per_char
        return {
            "chars": self.chars,
            "nats_per_char": npc,
            "bits_per_char": npc / LN2,
            "perplexity": math.exp(npc) if npc < 700 else float("inf"),
        }


def windows(n: int, streams: int, limit: Optional[int] = None) -> list[tuple[int, int, int, int]]:
    """How `score_ids` lays out n predictions: [(first start, stride, count, length)], each entry `count` windows of
    `length` predictions starting `stride` apart. The whole text: `streams` contiguous pieces, and what is left over
    as one more. With `limit` (0 < limit < n): `streams` windows of limit // streams predictions, evenly spaced from
    the text's start to its end, the same every time."""
    if n < 1:
        return []
    if limit is not None and 0 < limit < n:
        streams = max(1, min(streams, limit))
        length = limit // streams
        stride = (n - length) // (streams - 1) if streams > 1 else length  # >= length: windows never overlap
        return [(0, stride, streams, length)]
    streams = max(1, min(streams, n))
    per_stream = n // streams
    pieces = [(0, per_stream, streams, per_stream)]
    rest = n - streams * per_stream
    if rest:
        pieces.append((streams * per_stream, rest, 1, rest))
    return pieces


def scored_chars(n_ids: int, streams: int, limit: Optional[int] = None) -> int:
    """How many characters `score_ids` scores in a text of n_ids characters (all but the first, or about `limit`)."""
    return sum(count * length for _, _, count, length in windows(n_ids - 1, streams, limit))


def score_ids(model, ids: np.ndarray, streams: int = 1, chunk: int = 256, device=None, rank: int = 0,
              world: int = 1, limit: Optional[int] = None, on_progress=None) -> Score:
    """Total cross-entropy of ids[1:] given ids[:-1] under `model`, carrying state within each stream.

    `limit` (None or 0: no limit) scores only about that many characters, in `streams` evenly spaced windows
    (`windows`). With world > 1, this rank scores only its share (streams j with j % world == rank; the leftover
    piece on rank 0); summing the Scores of all ranks gives the single-process result, each character counted once.
    `on_progress(chars)`, if given, is called with the characters scored so far (this rank's).
    """
    import torch
    import torch.nn.functional as F
    from numpy.lib.stride_tricks import sliding_window_view

    device = device or model.head.weight.device
    counted = 0
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start, stride, count, length in windows(len(ids) - 1, streams, limit):
                # window j: ids[start + j*stride : start + j*stride + length + 1] (a view of a memory-mapped split,
                # never a copy); its inputs are all but the last character, its targets all but the first
                span = np.asarray(ids[start : start + (count - 1) * stride + length + 1])
                rows = sliding_window_view(span, length + 1)[::stride] if count > 1 else span[None, : length + 1]
                # this rank's streams; a single leftover piece belongs to rank 0
                mine = slice(rank, count, world) if count > 1 else slice(0, 1 if rank == 0 else 0)
                rows = rows[mine]
                count = rows.shape[0]
                if count == 0:
                    continue
                state = model.init_state(count, device)
                for col in range(0, length, chunk):
                    block = np.ascontiguousarray(rows[:, col : min(col + chunk, length) + 1]).astype(np.int64)
                    x = torch.from_numpy(np.ascontiguousarray(block[:, :-1]))
                    y = torch.from_numpy(np.ascontiguousarray(block[:, 1:]))
                    logits, _, state = model(x.to(device), state)
                    total += F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]).float(), y.to(device).reshape(-1), reduction="sum"
                    ).item()
                    counted += x.numel()
                    if on_progress is not None:
                        on_progress(counted)
    finally:
        model.train(was_training)
    return Score(total, counted)


def evaluate(
    checkpoint: Optional[str] = None,
    file: Optional[str] = None,
    streams: int = 1,
    skip_unknown: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Score FILE (default: the run's test split, else its val split) with a checkpoint; see the module doc. The whole
    text is scored; `progress`: show how far it got on stderr, for a long text (progress.ScoreProgress)."""
    from ..config import TrainConfig, from_dict
    from ..model.runtime import load_model, resolve_device

    if streams < 1:
        raise UsageError(f"--streams must be at least 1, not {streams}")
    ckpt, model, vocab = load_model(checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    train_config = from_dict(TrainConfig, ckpt["train_config"])
    ids, what, skipped = text_ids(ckpt, vocab, file, skip_unknown)
    if len(ids) < 2:
        raise DataError(f"{what} has {len(ids)} character(s); at least 2 are needed to score one")
    from .progress import ScoreProgress

    with ScoreProgress(len(ids) - 1, what, enabled=progress) as shown:
        score = score_ids(model, ids, streams=streams, chunk=max(64, train_config.seq_len), device=dev,
                          on_progress=shown.update)
    result = score.as_dict()
    result["text"] = what
    result["skipped_unknown"] = skipped
    result["checkpoint"] = ckpt["path"]
    return result


def text_ids(ckpt: dict, vocab, file: Optional[str], skip_unknown: bool = False):
    """The ids to score for `eval` (also used by `eval --show`): FILE ('-' for stdin), else the run's test split,
    else its validation split. Returns (ids, what they are, characters skipped as unknown)."""
    from ..config import TrainConfig, from_dict
    from ..data.dataset import decode_utf8
    from ..data.vocab import describe_chars
    from ..data.cache import load_ids
    from ..data.batches import split_ids

    train_config = from_dict(TrainConfig, ckpt["train_config"])
    skipped = 0
    if file is not None:
        if file == "-":
            import sys

            raw = sys.stdin.buffer.read()
            name = "standard input"
        else:
            from ..data.dataset import _read_file

            raw = _read_file(file)
            name = file
        text = decode_utf8(raw, name)
        unknown = vocab.unknown(text)
        if unknown:
            if not skip_unknown:
                raise DataError(
                    f"{name} has {len(unknown)} character(s) not in the model's vocabulary: "
                    f"{describe_chars(unknown)} (use --skip-unknown to drop them)"
                )
            known = set(vocab.chars)
            kept = "".join(c for c in text if c in known)
            skipped = len(text) - len(kept)
            if not kept:
                raise DataError(f"{name} has no characters the model knows (all {skipped} are unseen)")
            text = kept
        ids = vocab.encode(text)
        what = name
    else:
        corpus = ckpt["corpus"]
        not_rereadable = _not_rereadable(corpus["source"])
        if not_rereadable:
            raise UsageError(f"this run was trained on {not_rereadable}, so its test split cannot be re-read: pass "
                             f"the text file to score as FILE")
        text = load_ids(corpus["source"], train_config.glob, progress=False, follow_links=train_config.follow_links)
        if text.sha256 != corpus["sha256"]:
            raise DataError(
                f"the corpus {corpus['source']} has changed since training (sha256 differs): pass FILE to eval"
            )
        if text.vocab != vocab:
            raise DataError(f"the corpus {corpus['source']} does not match the checkpoint's vocabulary")
        splits = split_ids(text.ids, train_config.val_frac, train_config.test_frac)
        if len(splits.test) > 1:
            ids, what = splits.test, "test split"
        elif len(splits.val) > 1:
            ids, what = splits.val, "validation split"
        else:
            raise DataError("the run has no test or validation split to score: pass FILE")
    return ids, what, skipped


def _not_rereadable(source: str) -> Optional[str]:
    """What a corpus source is when reading it again would block or read other text (standard input, a FIFO, a
    terminal or other device: anything but a regular file or a directory); None when it can be re-read."""
    import stat

    if source == "-":
        return "standard input"
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return None  # gone: reading it says so
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{source} ({'a FIFO' if stat.S_ISFIFO(mode) else 'not a regular file'})"
