"""Small helpers shared by train, sample and evaluate: devices, rebuilding a model from a checkpoint."""

from __future__ import annotations

from ..config import ModelConfig, from_dict
from ..errors import DataError, UsageError


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available")
    return device


def load_model(checkpoint=None):
    """(checkpoint dict, model, vocabulary) for a checkpoint file, a run directory, or None for the newest run."""
    from ..store.checkpoint import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    model, vocab = build_model(ckpt)
    return ckpt, model, vocab


def build_model(ckpt: dict, kernel: str = "auto"):
    """The model and vocabulary a loaded checkpoint describes, weights loaded, in eval mode on the CPU. torch's
    global RNG is left as it was (the initial weights it would draw are overwritten anyway)."""
    import torch

    from ..data.vocab import Vocab
    from .network import CharRNN

    try:
        config = from_dict(ModelConfig, ckpt["model_config"])
        vocab = Vocab(ckpt["vocab"])
        with torch.random.fork_rng(devices=[]):
            model = CharRNN(config, kernel=kernel)
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"checkpoint is incomplete or corrupt: {ckpt.get('path', '?')} ({exc.__class__.__name__})") from None
    model.eval()
    return model, vocab
