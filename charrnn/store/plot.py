"""`charrnn plot RUN`: a PNG of training and validation loss and the learning rate, from metrics.jsonl.

matplotlib is an optional extra (`pip install "charrnn[plot]"`); without it, a MissingDependencyError (exit 69)
says how to install it.
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import MissingDependencyError
from .fileio import atomic_write
from .metrics import read_metrics

PLOT_NAME = "loss.png"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "plotting needs matplotlib, which is not installed: pip install \"charrnn[plot]\" (or pip install matplotlib)"
        ) from None
    return plt


def plot_run(run: str, output: Optional[str] = None) -> str:
    """Write the loss / learning-rate figure of RUN (a run directory or its metrics.jsonl); returns its path."""
    metrics = read_metrics(run)
    if output is None:
        output = os.path.join(os.path.dirname(metrics.path) or ".", PLOT_NAME)
    plt = _pyplot()
    has_lr = any("lr" in row for row in metrics.train)
    fig, axes = plt.subplots(2 if has_lr else 1, 1, figsize=(8, 6 if has_lr else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    if metrics.train:
        ax.plot([r["step"] for r in metrics.train], [r["loss"] for r in metrics.train], label="train loss", lw=1)
    if metrics.val:
        ax.plot([r["step"] for r in metrics.val], [r["val_loss"] for r in metrics.val], "o-", label="val loss",
                lw=1.5, ms=3)
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(f"charrnn: {os.path.basename(os.path.dirname(os.path.abspath(metrics.path)))}")
    ax.grid(alpha=0.3)
    ax.legend()
    if has_lr:
        lr_ax = axes[1][0]
        rows = [r for r in metrics.train if "lr" in r]
        lr_ax.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:green", lw=1)
        lr_ax.set_ylabel("learning rate")
        lr_ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    try:
        with atomic_write(output, "plot") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return output
