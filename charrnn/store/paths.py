"""Where charrnn keeps things: CHARRNN_HOME (default: the current directory) holds checkpoints/ and data/.

`charrnn train` puts runs under $CHARRNN_HOME/checkpoints, `sample`/`eval` look for the newest run there, and
named or downloaded corpora are cached in $CHARRNN_HOME/data. $CHARRNN_HOME/speeds.json keeps how fast this machine
trains each candidate size (charrnn.training.autosize). Nothing here imports torch.
"""

from __future__ import annotations

import os

HOME_ENV = "CHARRNN_HOME"


def charrnn_home() -> str:
    """$CHARRNN_HOME if set (and not empty), else the current directory."""
    return os.environ.get(HOME_ENV) or "."


def runs_dir() -> str:
    """The default base directory for run directories: $CHARRNN_HOME/checkpoints."""
    return os.path.join(charrnn_home(), "checkpoints")


def data_dir() -> str:
    """Where named and downloaded corpora are cached: $CHARRNN_HOME/data."""
    return os.path.join(charrnn_home(), "data")



def speeds_file() -> str:
    """Where the measured speed of each candidate model size is kept: $CHARRNN_HOME/speeds.json."""
    return os.path.join(charrnn_home(), "speeds.json")
