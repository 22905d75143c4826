"""`charrnn info CHECKPOINT`: what a checkpoint holds, read without building the model."""

from __future__ import annotations

import datetime
from typing import Optional

from .metrics import LN2
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def printable(chars: str) -> str:
    """The characters with control and other invisible ones escaped (\\n, \\t, \\r, \\xNN, \\uNNNN); a backslash
    is doubled so the result is unambiguous. A space stays a space."""
    out = []
    for c in chars:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c == " " or c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def checkpoint_info(checkpoint: Optional[str] = None) -> dict:
    """A plain dict describing a checkpoint (the `--json` shape of `charrnn info`)."""
    from .checkpoint import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    model = ckpt.get("model_config", {})
    progress = ckpt.get("progress", {})
    corpus = ckpt.get("corpus", {})
    vocab = ckpt.get("vocab", "")
    best = progress.get("best_val_loss")
    saved_at = ckpt.get("saved_at")
    return {
        "checkpoint": ckpt["path"],
        "format_version": ckpt.get("version"),
        "architecture": {
            "cell": model.get("cell"),
            "hidden_size": model.get("hidden_size"),
            "num_layers": model.get("num_layers"),
            "dropout": model.get("dropout"),
            "vocab_size": model.get("vocab_size", len(vocab)),
        },
        "model_size": ckpt.get("model_size") or "given or the default",
        "weights": _weights(ckpt),
        "parameters": int(sum(t.numel() for t in ckpt.get("model", {}).values())),
        "vocab": vocab,
        "vocab_printable": printable(vocab),
        "step": progress.get("step"),
        "stopped_by": _stopped_by(progress, ckpt.get("train_config", {})),
        "epoch": progress.get("epoch"),
        "elapsed": progress.get("elapsed"),
        "chars_seen": progress.get("chars_seen"),
        "best_val_loss": best,
        "best_val_bpc": best / LN2 if best is not None else None,
        "corpus": {"source": corpus.get("source"), "sha256": corpus.get("sha256"), "chars": corpus.get("chars")},
        "precision": (ckpt.get("precision") or {}).get("summary"),
        "torch_version": ckpt.get("torch_version"),
        "saved_at": datetime.datetime.fromtimestamp(saved_at).isoformat(timespec="seconds") if saved_at else None,
        "train_config": ckpt.get("train_config", {}),
    }


def _weights(ckpt: dict) -> str:
    """Which weights "model" holds: --ema's moving average, or the weights as trained."""
    if ckpt.get("weights"):  # a .safetensors model file says which weights it holds (charrnn.store.modelfile)
        return ckpt["weights"]
    decay = (ckpt.get("train_config") or {}).get("ema") or 0.0
    if ckpt.get("train_weights") is None or not decay:
        return "as trained"
    return (f"moving average (--ema {decay:g}, about the last {1 / (1 - decay):,.0f} steps) of the trained weights, "
            f"which the checkpoint also holds to resume")


def _stopped_by(progress: dict, train_config: dict) -> Optional[str]:
    """How the run ended, if this checkpoint is its last: as the run recorded it, or (an older checkpoint, which
    does not record it) a step limit or time budget reached."""
    if progress.get("stopped_by"):
        return progress["stopped_by"]
    step, elapsed = progress.get("step"), progress.get("elapsed")
    max_steps, budget = train_config.get("max_steps"), train_config.get("time_budget")
    if max_steps is not None and step is not None and step >= max_steps:
        return "max_steps"
    if budget is not None and elapsed is not None and elapsed >= budget:
        return "time_budget"
    return None


def _dropout(info: dict) -> str:
    """The dropout, or for --dropout auto not decided (a time-budget run decides after its first ~25 steps) what
    that means: the run trained without dropout up to this checkpoint."""
    rate = info["architecture"]["dropout"]
    if rate is not None:
        return str(rate)
    if info.get("stopped_by"):
        return "auto: the run ended before deciding (trained without dropout)"
    return "auto: not decided yet at this checkpoint (trained without dropout so far)"


# what the training options are called on the command line, where that is not the field's name
_OPTION_NAMES = {"beta1": None, "beta2": None}  # not options: AdamW's betas are fixed


def training_options(train_config: dict) -> str:
    """The run's training options as command-line text (`--lr 0.003 --batch-size 32 ...`), the ones set to nothing
    left out; a time budget in seconds."""
    parts = []
    for key, value in (train_config or {}).items():
        if key in _OPTION_NAMES and _OPTION_NAMES[key] is None or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif key == "time_budget":
            parts.append(f"{flag} {value:g}s")
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def format_info(info: dict) -> str:
    """The human-readable form: one `label: value` line each."""
    arch = info["architecture"]
    best = info["best_val_loss"]
    corpus = info["corpus"]
    rows = [
        ("checkpoint", info["checkpoint"]),
        ("architecture", f"{arch['cell']} RNN, {arch['num_layers']} layer(s) x {arch['hidden_size']} hidden units, "
                         f"dropout {_dropout(info)}"),
        ("model size", info["model_size"]),
        ("parameters", f"{info['parameters']:,}"),
        ("weights", info["weights"]),
        ("vocabulary", f"{arch['vocab_size']} characters: {info['vocab_printable']}"),
        ("steps", f"{info['step']:,} (epoch {info['epoch']})" if info["step"] is not None else "?"),
        ("training time", f"{info['elapsed']:.1f}s" if info["elapsed"] is not None else "?"),
        ("best val loss", f"{best:.4f} nats/char ({info['best_val_bpc']:.4f} bits/char)" if best is not None else "n/a"),
        ("corpus", f"{corpus['source']} ({corpus['chars']:,} characters)" if corpus["chars"] is not None
                   else str(corpus["source"])),
        ("corpus sha256", str(corpus["sha256"])),
        ("training options", training_options(info.get("train_config")) or "not recorded"),
        ("precision", info["precision"] or "not recorded (a checkpoint from an earlier version)"),
        ("torch", str(info["torch_version"])),
        ("saved at", str(info["saved_at"])),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows) + "\n"
