"""charrnn: train char-level RNN language models, sample from them, and measure them.

The Python API mirrors the command line::

    import charrnn
    result = charrnn.train("corpus.txt", charrnn.ModelConfig(hidden_size=256), charrnn.TrainConfig(max_steps=500))
    print(charrnn.sample(result.latest, length=200, seed=1)[0])
    print(charrnn.evaluate(result.latest, "held_out.txt"))

Importing charrnn does not import torch; the functions below load it when first called.
"""

from __future__ import annotations

from .config import ModelConfig, TrainConfig
from .errors import CharrnnError

# These modules import torch only inside their functions. Importing the functions here (rather than lazily) keeps
# `charrnn.train` the function even after `charrnn.train` the module has been imported.
from .evaluate import evaluate
from .sample import generate, sample
from .train import TrainResult, train

__version__ = "0.1.0"

_LAZY = {
    "CharRNN": ("model", "CharRNN"),
    "Vocab": ("data", "Vocab"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "resolve_corpus": ("corpora", "resolve_corpus"),
    "checkpoint_info": ("info", "checkpoint_info"),
    "plot_run": ("plot", "plot_run"),
    "explain": ("visualize", "explain"),
    "trace": ("visualize", "trace"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


__all__ = ["ModelConfig", "TrainConfig", "CharrnnError", "__version__", "train", "TrainResult", "sample",
           "generate", "evaluate", *_LAZY]
