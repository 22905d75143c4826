"""charrnn: train char-level RNN language models, sample from them, and measure them.

The Python API mirrors the command line::

    import charrnn
    result = charrnn.train("corpus.txt", charrnn.ModelConfig(hidden_size=256), charrnn.TrainConfig(max_steps=500))
    print(charrnn.sample(result.latest, length=200, seed=1)[0])
    print(charrnn.evaluate(result.latest, "held_out.txt"))

Importing charrnn does not import torch; the functions below load it when first called.
"""

import importlib

from .config import ModelConfig, TrainConfig
from .errors import CharrnnError

__version__ = "0.1.0"

_API = {  # public name -> its module, imported on first use: `import charrnn` loads neither torch nor numpy
    "train": "training.launch", "TrainResult": "training.trainer", "sample": "inference.sampling",
    "generate": "inference.sampling", "evaluate": "inference.evaluation", "CharRNN": "model.network",
    "Vocab": "data.vocab", "load_checkpoint": "store.checkpoint", "resolve_corpus": "data.corpora",
    "checkpoint_info": "store.info", "plot_run": "store.plot", "explain": "inference.views",
    "trace": "inference.views",
}
__all__ = ["ModelConfig", "TrainConfig", "CharrnnError", "__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), attr or name)


def __dir__() -> list:
    return sorted(set(globals()) | set(_API))
