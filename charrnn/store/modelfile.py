""".safetensors model files: a trained model's weights (float32) and, in the header's metadata, what is needed to
use them (vocabulary, model config, step, val loss, corpus, versions). Written by `charrnn export --format
safetensors`, read by `load_checkpoint` (so `sample`, `eval`, `info` and `serve` take one like a checkpoint).

The format (https://huggingface.co/docs/safetensors): 8 bytes, the header's length N as a little-endian u64; N
bytes of JSON, {tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
padded with spaces to a multiple of 8; then the tensors' bytes, back to back, little-endian. There is no pickle
and no code in it. Both the writer and the reader here use only json and struct (and torch for the tensors), so
reading a model file needs no extra package; the tests check the files against the `safetensors` package.

Metadata values are strings (the format allows no other): JSON for the structured ones. `vocab` is a JSON list
of one-character strings, written with ASCII escapes, so every character survives exactly (newlines, non-ASCII,
lone surrogates from `--errors surrogateescape`).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Optional

from ..errors import DataError, NotACheckpointError

FORMAT = "charrnn"  # __metadata__["format"]
FORMAT_VERSION = "1"
READABLE_VERSIONS = ("1",)
LOADED_FORMAT = "charrnn-safetensors"  # the "format" of the checkpoint-like dict the reader returns
SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors package's own limit
_DTYPES = {"F32": 4}


def looks_like_model_file(raw: bytes) -> bool:
    """Whether bytes start like a safetensors file (by content, not by name): a header length that fits the
    file, then `{`. A checkpoint (a zip archive or a pickle) never does."""
    if len(raw) < 10:
        return False
    (length,) = struct.unpack("<Q", raw[:8])
    return 2 <= length <= len(raw) - 8 and raw[8:9] == b"{"


# ----------------------------------------------------------------------------------------------------------------
# writing


def metadata_for(ckpt: dict) -> dict:
    """The header metadata for a loaded checkpoint: every value a string."""
    from .. import __version__

    progress = ckpt.get("progress") or {}
    corpus = ckpt.get("corpus") or {}
    train_config = ckpt.get("train_config") or {}
    best = progress.get("best_val_loss")
    ema = train_config.get("ema") or 0.0
    weights = ckpt.get("weights") or (  # a model file read back says which weights it holds
        f"moving average (--ema {ema:g}, about the last {1 / (1 - ema):,.0f} steps) of the trained weights"
        if ckpt.get("train_weights") is not None and ema else "as trained")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vocab": json.dumps(list(ckpt["vocab"])),  # ASCII escapes: exact for every character
        "model_config": json.dumps(ckpt["model_config"]),
        "step": str(progress.get("step", "")),
        "val_loss": "" if best is None else repr(float(best)),
        "corpus": str(corpus.get("source") or ""),
        "corpus_sha256": str(corpus.get("sha256") or ""),
        "corpus_chars": "" if corpus.get("chars") is None else str(corpus["chars"]),
        "charrnn_version": __version__,
        "torch_version": str(ckpt.get("torch_version") or ""),
        "saved_at": "" if ckpt.get("saved_at") is None else repr(float(ckpt["saved_at"])),
        "weights": weights,
        "precision": str((ckpt.get("precision") or {}).get("summary") or ""),
        "model_size": str(ckpt.get("model_size") or ""),
        "progress": json.dumps(progress),
        "train_config": json.dumps(train_config),
    }
    return meta


def model_file_bytes(state_dict: dict, metadata: dict) -> bytes:
    """The bytes of a safetensors file holding `state_dict`'s tensors as float32, in its order."""
    import torch

    header, blobs, offset = {}, [], 0
    for name, tensor in state_dict.items():
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if any(not isinstance(v, str) for v in metadata.values()):
        raise TypeError("safetensors metadata values must be strings")
    header["__metadata__"] = metadata
    text = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors package writes it
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def save_model_file(ckpt: dict, model, path: str) -> str:
    """Write `model`'s weights (float32) and `ckpt`'s description to `path`, atomically; returns path."""
    from .fileio import write_bytes

    write_bytes(path, model_file_bytes(model.state_dict(), metadata_for(ckpt)), what="model file")
    return path


# ----------------------------------------------------------------------------------------------------------------
# reading


def parse_header(raw: bytes, path: str) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, where the data starts) of a safetensors file's bytes; DataError if malformed."""
    corrupt = DataError(f"model file is incomplete or corrupt: {path}")
    if not looks_like_model_file(raw):
        raise corrupt
    (length,) = struct.unpack("<Q", raw[:8])
    if length > _MAX_HEADER:
        raise corrupt
    try:
        header = json.loads(raw[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt from None
    if not isinstance(header, dict):
        raise corrupt
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise corrupt
    return header, metadata, 8 + length


def read_model_file(raw: bytes, path: str) -> dict:
    """A checkpoint-like dict (what `runtime.build_model` and `info` read) from a charrnn safetensors file's
    bytes. Foreign or damaged files: DataError (exit 65)."""
    import numpy as np
    import torch

    corrupt = DataError(f"model file is incomplete or corrupt: {path}")
    header, meta, start = parse_header(raw, path)
    if meta.get("format") != FORMAT:
        raise NotACheckpointError(f"{path} is a safetensors file but not a charrnn model (its metadata has no "
                        f"format: {FORMAT})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DataError(f"model file {path} has format version {meta.get('format_version')!r}; this charrnn reads "
                        f"{' and '.join(READABLE_VERSIONS)}")
    data = memoryview(raw)[start:]
    tensors, covered = {}, 0
    try:
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = (int(x) for x in entry["data_offsets"])
            shape = [int(n) for n in entry["shape"]]
            size = _DTYPES.get(entry["dtype"])
            if size is None or begin != covered or end > len(data) or end - begin != size * math.prod(shape):
                raise corrupt
            array = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape)
            tensors[name] = torch.from_numpy(array.astype(np.float32, copy=True))
            covered = end
        if covered != len(data):  # bytes beyond the last tensor: cut or padded by something else
            raise corrupt
        vocab = json.loads(meta["vocab"])
        if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
            raise corrupt
        model_config = json.loads(meta["model_config"])
        progress = json.loads(meta.get("progress") or "{}")
        train_config = json.loads(meta.get("train_config") or "{}")
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        raise corrupt from None
    if not all(isinstance(d, dict) for d in (model_config, progress, train_config)):
        raise corrupt
    if not progress:  # a file written by another tool from the format's documented keys alone
        progress = {"step": _number(meta.get("step"), int), "best_val_loss": _number(meta.get("val_loss"), float)}
    return {
        "format": LOADED_FORMAT,
        "version": int(meta["format_version"]),
        "model_config": model_config,
        "train_config": train_config,
        "vocab": "".join(vocab),
        "model": tensors,
        "progress": progress,
        "corpus": {"source": meta.get("corpus") or None, "sha256": meta.get("corpus_sha256") or None,
                   "chars": _number(meta.get("corpus_chars"), int)},
        "precision": {"summary": meta["precision"]} if meta.get("precision") else None,
        "torch_version": meta.get("torch_version") or None,
        "saved_at": _number(meta.get("saved_at"), float),
        "model_size": meta.get("model_size") or None,
        "weights": meta.get("weights") or "as trained",
        "metadata": meta,
        "path": os.path.abspath(path),
    }


def _number(text: Optional[str], kind):
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None
