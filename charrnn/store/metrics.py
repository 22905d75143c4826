"""Reading a run's metrics.jsonl: training rows ({"step", "loss", "lr", ...}) and validation rows ({"step",
"val_loss", "val_bpc"}), as `train` writes them. Shared by `plot` and the end-of-training summary."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from ..errors import DataError, InputMissingError

METRICS = "metrics.jsonl"
LN2 = math.log(2.0)  # nats -> bits


@dataclass
class Metrics:
    path: str
    train: list = field(default_factory=list)  # rows with "loss"
    val: list = field(default_factory=list)  # rows with "val_loss"


def metrics_path(run: str) -> str:
    """RUN may be a run directory, its metrics.jsonl, or a checkpoint file inside it."""
    if os.path.isdir(run):
        return os.path.join(run, METRICS)
    if run.endswith(".pt"):
        return os.path.join(os.path.dirname(run) or ".", METRICS)
    return run


def rows(lines) -> list:
    """The rows of metrics.jsonl lines: dicts with a "step"; a line cut short by a kill is skipped."""
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            out.append(row)
    return out


def read_metrics(run: str) -> Metrics:
    path = metrics_path(run)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise InputMissingError(f"no metrics file: {path} (is {run} a run directory made by `charrnn train`?)") from None
    except OSError as exc:
        raise InputMissingError(f"cannot read {path}: {exc.strerror or exc}") from None
    metrics = Metrics(path)
    for row in rows(lines):
        if "val_loss" in row:
            metrics.val.append(row)
        elif "loss" in row:
            metrics.train.append(row)
    if not metrics.train and not metrics.val:
        raise DataError(f"{path} has no metrics rows yet")
    return metrics
