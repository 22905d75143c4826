"""The web export: a folder that runs the model in a browser, served by any static file server.

    index.html    a page to play with the model (prompt, temperature, top-k, top-p, length, seed, Generate, Stop)
    charrnn.js    an ES module: `const model = await load("./model"); await model.generate({prime, length, ...})`
    model.json    the vocabulary (as code points, exactly), the config, the tensors' names, shapes and offsets, and
                  the model's name, step, val loss and corpus
    model.bin     every weight as little-endian float32, in the model's own state_dict layout (row-major), one
                  tensor after the other: the file's size is 4 bytes per parameter

The page and the module are package files (charrnn/export/webpage/) copied as they are: no build step, nothing
fetched from outside the folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError

FORMAT = "charrnn-web"
FORMAT_VERSION = 1
ASSETS = Path(__file__).resolve().parent / "webpage"
ASSET_FILES = ("index.html", "charrnn.js")
WEIGHTS_FILE = "model.bin"
META_FILE = "model.json"


def model_name(ckpt: dict) -> str:
    """The run directory's name (or the checkpoint file's stem when it stands alone)."""
    path = ckpt.get("path") or ""
    parent = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    return parent or stem or "charrnn model"


def metadata(ckpt: dict, model, vocab, tensors: list[dict]) -> dict:
    from .. import __version__

    progress = ckpt.get("progress") or {}
    corpus = ckpt.get("corpus") or {}
    val = progress.get("best_val_loss")
    val = float(val) if val is not None and math.isfinite(val) else None
    config = dict(ckpt.get("model_config") or {})
    config.update(cell=model.config.cell, hidden_size=model.config.hidden_size,
                  num_layers=model.config.num_layers, vocab_size=len(vocab))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "charrnn_version": __version__,
        "name": model_name(ckpt),
        "step": progress.get("step"),
        "val_loss": val,  # the best validation loss, nats per character
        "val_bpc": val / 0.6931471805599453 if val is not None else None,
        "corpus": {"source": corpus.get("source"), "sha256": corpus.get("sha256"), "chars": corpus.get("chars")},
        "config": config,
        "parameters": sum(t["size"] for t in tensors),
        # the vocabulary twice: as code points (exact, whatever the characters), and as text for a reader
        "vocab": [ord(c) for c in vocab.chars],
        "vocab_text": vocab.chars,
        "weights": {"file": WEIGHTS_FILE, "dtype": "float32", "byte_order": "little", "tensors": tensors},
    }


def write_weights(model, path: str) -> list[dict]:
    """Write the state_dict as float32, tensor after tensor; returns name, shape, offset (bytes), size (elements)."""
    import numpy as np

    tensors, offset = [], 0
    with open(path, "wb") as f:
        for name, value in model.state_dict().items():
            array = np.ascontiguousarray(value.detach().float().cpu().numpy(), dtype="<f4")
            f.write(array.tobytes())
            tensors.append({"name": name, "shape": list(array.shape), "offset": offset, "size": int(array.size)})
            offset += array.nbytes
    return tensors


def write_web(ckpt: dict, model, vocab, out_dir: str) -> list[str]:
    """Write the web folder for a loaded model into out_dir (which must not exist yet); returns the files written.

    The folder is assembled under a temporary name beside out_dir and renamed into place at the end, so a failure
    leaves nothing behind."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir):
        raise UsageError(f"{out_dir} already exists")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise UsageError(f"the folder {parent} does not exist")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        tensors = write_weights(model, os.path.join(tmp, WEIGHTS_FILE))
        meta = metadata(ckpt, model, vocab, tensors)
        with open(os.path.join(tmp, META_FILE), "w", encoding="ascii") as f:
            json.dump(meta, f, indent=1, ensure_ascii=True, allow_nan=False)
            f.write("\n")
        for name in ASSET_FILES:
            shutil.copyfile(ASSETS / name, os.path.join(tmp, name))
        os.chmod(tmp, 0o755)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [os.path.join(out_dir, name) for name in (*ASSET_FILES, META_FILE, WEIGHTS_FILE)]
