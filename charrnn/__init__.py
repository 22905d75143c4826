"""charrnn: train char-level RNN language models, sample from them, and measure them.

The Python API mirrors the command line::

    import charrnn
    result = charrnn.train("corpus.txt", charrnn.ModelConfig(hidden_size=256), charrnn.TrainConfig(max_steps=500))
    print(charrnn.sample(result.latest, length=200, seed=1)[0])
    print(charrnn.evaluate(result.latest, "held_out.txt"))

Importing charrnn does not import torch; the functions below load it when first called.
"""

from __future__ import annotations

import importlib
import sys
import types

from .config import ModelConfig, TrainConfig
from .errors import CharrnnError

__version__ = "0.1.0"

# name -> (module, attribute), imported on first use so that `import charrnn` (and `charrnn --help`) loads neither
# torch, numpy nor the training code
_LAZY = {
    "train": ("train", "train"),
    "TrainResult": ("trainer", "TrainResult"),
    "sample": ("sample", "sample"),
    "generate": ("sample", "generate"),
    "evaluate": ("evaluate", "evaluate"),
    "CharRNN": ("model", "CharRNN"),
    "Vocab": ("data", "Vocab"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "resolve_corpus": ("corpora", "resolve_corpus"),
    "checkpoint_info": ("info", "checkpoint_info"),
    "plot_run": ("plot", "plot_run"),
    "explain": ("visualize", "explain"),
    "trace": ("visualize", "trace"),
}


class _Api:
    """`charrnn.NAME` is the API object even where a submodule has the same name (train, sample, evaluate): the
    import system records each imported submodule as an attribute of this package, and this descriptor takes
    that assignment without letting it replace the function. Anything else assigned (a test's patch) is kept
    until deleted."""

    def __init__(self, name: str, module: str, attr: str):
        self.name, self.module, self.attr = name, module, attr

    def __get__(self, package, owner=None):
        patched = package.__dict__.get("_patched", {})
        if self.name in patched:
            return patched[self.name]
        return getattr(importlib.import_module(f".{self.module}", __name__), self.attr)

    def __set__(self, package, value):
        if not isinstance(value, types.ModuleType):
            package.__dict__.setdefault("_patched", {})[self.name] = value

    def __delete__(self, package):
        package.__dict__.get("_patched", {}).pop(self.name, None)


def _dir(package) -> list:
    return sorted(set(package.__dict__) | set(_LAZY))


sys.modules[__name__].__class__ = type("_Package", (types.ModuleType,),
                                      {"__dir__": _dir, **{name: _Api(name, *where) for name, where in _LAZY.items()}})

__all__ = ["ModelConfig", "TrainConfig", "CharrnnError", "__version__", *_LAZY]
