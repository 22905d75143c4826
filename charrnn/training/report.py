"""What `train` shows at the end, on stderr: a rich summary table and a sparkline of the validation loss."""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from ..store.metrics import LN2
from ..store.units import duration
SPARK_CHARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """A compact one-line chart: each character is the mean of a bucket of values, scaled min..max."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    if len(values) > width:
        buckets = []
        for i in range(width):
            chunk = values[i * len(values) // width : (i + 1) * len(values) // width]
            buckets.append(sum(chunk) / len(chunk))
        values = buckets
    low, high = min(values), max(values)
    span = high - low
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((v - low) / span * top) if span > 0 else 0] for v in values)


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def time_row(result, wall: Optional[float] = None) -> str:
    """Training time (the steps and the periodic evaluations; across resumes) and,
    where known, this command's wall time (with start-up, the final validation and saving)."""
    before = getattr(result, "elapsed_before", 0.0) or 0.0
    text = f"{duration(result.elapsed)} training"
    if before > 0:
        text += f" ({duration(before)} of it before this resume)"
    if wall is not None:
        text += (f"; {duration(wall)} wall for this command (with start-up and the final validation and save, "
                 f"which training time leaves out)")
    return text


def stop_words(result) -> str:
    """Why the run ended: at the step limit its size choice set, where more steps stopped helping on corpora of this
    size (not "max steps", as if the user had asked for it), else the stop rule's reason."""
    limit = getattr(result, "step_limit", None)
    if result.stopped_by == "max_steps" and limit is not None and result.step >= limit:
        return f"stopped after {limit:,} steps, where more steps stopped helping on corpora of this size"
    return f"stopped by {result.stopped_by.replace('_', ' ')}"


SLOW_SHARE = 0.5  # a run that makes fewer than this share of the steps its size choice expected says so


def fewer_steps_than_expected(result) -> Optional[str]:
    """One line where the run made far fewer steps than its size choice expected (the machine busier than when its
    speeds were measured), with both numbers; else None. A run stopped by a signal or an error is not judged."""
    expected = getattr(result, "expected_steps", None)
    if not expected or result.stopped_by not in ("time_budget", "max_steps", "epochs"):
        return None
    made = result.step  # a choosing run is a new one: all its steps are this session's
    if made >= SLOW_SHARE * expected:
        return None
    others = getattr(result, "shared_with", 0)
    why = (f"it shared the CPU with up to {others} other charrnn run{'s' if others > 1 else ''}" if others else
           "the machine was slower than the speeds it was chosen with")
    return f"made {made:,} of the ~{expected:,.0f} steps its size was chosen for: {why}"


def summary_rows(result, val_losses: Optional[Sequence[float]] = None,
                 wall: Optional[float] = None) -> list[tuple[str, str]]:
    """The summary as (label, value) rows; `val_losses` defaults to the run's whole validation history; `wall` is
    this command's wall time, if known."""
    if val_losses is None:
        val_losses = _val_history(result)
    rows = [("steps", f"{result.step:,} (epoch {result.epoch}, {stop_words(result)})"),
            ("time", time_row(result, wall))]
    slow = fewer_steps_than_expected(result)
    if slow:
        rows.append(("note", slow))
    if result.best_val_loss is not None:
        rows.append(("best val loss", f"{result.best_val_loss:.4f} nats/char"))
        rows.append(("best val bits/char", f"{result.best_val_loss / LN2:.4f}"))
    else:
        rows.append(("best val loss", "n/a (no validation split)"))
    if result.last_train_loss is not None:
        rows.append(("last train loss", f"{result.last_train_loss:.4f} nats/char"))
    val_losses = [v for v in val_losses or () if v is not None and math.isfinite(v)]
    if len(val_losses) >= 3:  # a chart of one or two points says nothing the numbers do not
        rows.append(("val loss", f"{sparkline(val_losses)}  {val_losses[0]:.3f} → {val_losses[-1]:.3f}"))
    elif val_losses:
        rows.append(("val loss", " → ".join(f"{v:.3f}" for v in val_losses)))
    rows.append(("run directory", result.run_dir))
    rows.append(("latest checkpoint", result.latest))
    if result.best:
        rows.append(("best checkpoint", result.best))
    return rows


def _val_history(result) -> list:
    """Validation losses from the run's metrics.jsonl (the whole run, across resumes), else this session's."""
    from ..errors import CharrnnError
    from ..store.metrics import read_metrics

    try:
        return [row["val_loss"] for row in read_metrics(os.path.join(result.run_dir)).val]
    except CharrnnError:
        return list(result.val_history)


def print_summary(result) -> None:
    """The end-of-training table on stderr (stdout stays for results)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a log file: keep paths on one line
    wall, measured = process_age(), getattr(result, "wall", None)
    if wall is None or (measured is not None and wall < measured):  # /proc unreadable, or not to be trusted here
        wall = measured
    # the one-line gist, for logs and greps
    title = f"charrnn: done: {result.step} steps in {result.elapsed:.1f}s of training"
    if wall is not None:
        title += f" ({wall:.1f}s wall)"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in summary_rows(result, wall=wall):
        table.add_row(label, value)
    console.print(table)
