"""Leave one corpus out (issue 28): would a size rule fit on the other corpora pick the best size for this one?

    python benchmarks/leave_one_out.py \\
        --budget results/corpora-budget-60s-20261204-1907.jsonl results/corpora-budget-60s-20261204-1938.jsonl \\
        --sweep english-1000000.txt=results/size-sweep.jsonl --sweep c-1000000.txt=results/size-sweep-c1m.jsonl ...

Two kinds of measurement go in. `--budget`: benchmarks/corpora_budget.py's points, each size trained for the budget
on each corpus with several seeds (what each size reaches there, and how many steps it makes on this machine).
`--sweep CORPUS=FILE[,FILE]`: benchmarks/size_sweep.py's loss after N steps on that corpus (machine-independent;
a later file's point replaces an earlier one's).

For each corpus left out, each rule predicts every size's loss after the steps that size made there in the budget
(the mean over the seeds: what a run's kept speeds would predict) and picks the lowest; the table shows its pick,
the pick's mean loss minus the best size's mean (its regret), and the spread (max - min over the seeds) of the
points it compares. Rules:

- `tables`: charrnn's own (charrnn.training.autosize.predicted_loss, with `--optimizer`'s table), fit on
  tiny-shakespeare with the Python source's gains for larger corpora; on the English corpus it is not left out.
- `mean`: the mean, over the other corpora with a sweep of every size, of each size's loss after those steps.
- `ratio`: the same of each loss divided by that corpus's 2x256 loss at 500 steps (its difficulty).

Between a sweep's step counts the loss is linear in log(steps); past its last count it holds (no gain assumed), as
in charrnn's tables. `auto` is what `charrnn train` chose in the budget runs themselves (size `auto`), where present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from corpora_budget import load_points  # noqa: E402

from charrnn.training import autosize  # noqa: E402


def read_sweep(paths: str) -> dict:
    """size name -> [(steps, best validation nats)] from comma-separated files, the mean over seeds where a point
    has several; a later file's points replace an earlier one's of the same size and steps."""
    merged = {}
    for path in paths.split(","):
        points = defaultdict(lambda: defaultdict(list))
        with open(path) as f:
            for row in map(json.loads, f):
                if "model" in row and row.get("options") in (None, [], ["--ema", "0"]):
                    points[row["model"]][row["steps"]].append(row["val_nats"])
        for size, by in points.items():
            for n, values in by.items():
                merged.setdefault(size, {})[n] = statistics.mean(values)
    return {size: sorted(by.items()) for size, by in merged.items()}


def along(points: list, steps: float) -> float:
    return autosize._along(points, steps, hold_last=True)


def parse_size(name: str) -> tuple:
    layers, hidden = name.split("x")
    return int(layers), int(hidden)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", nargs="+", required=True, help="corpora_budget.py JSONL files")
    ap.add_argument("--sweep", action="append", default=[], help="CORPUS=FILE[,FILE]: size_sweep.py JSONL of that corpus")
    ap.add_argument("--chars", type=int, default=1_000_000, help="the corpora's characters (for `tables`)")
    ap.add_argument("--train-frac", type=float, default=0.9, help="the runs' training share (for `tables`)")
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"),
                    help="the budget runs' optimizer (for `tables`: charrnn's prediction with it)")
    args = ap.parse_args()
    rows = load_points(args.budget)
    sweeps = {}
    for item in args.sweep:
        corpus, path = item.split("=", 1)
        sweeps[corpus] = read_sweep(path)
    loss = defaultdict(lambda: defaultdict(list))
    steps = defaultdict(lambda: defaultdict(list))
    chose = defaultdict(list)
    for r in rows:
        loss[r["corpus"]][r["size"]].append(r["val_nats"])
        steps[r["corpus"]][r["size"]].append(r["steps"])
        if r["size"] == "auto":
            chose[r["corpus"]].append(r["chose"])

    header = ("| left out | steps in the budget (mean) | best (mean, spread) | tables | mean | ratio | auto |\n"
              "|---|---|---|---|---|---|---|")
    print(header)
    regrets = defaultdict(list)
    for corpus in sorted(loss):
        sizes = sorted(s for s in loss[corpus] if s != "auto")
        mean_loss = {s: statistics.mean(loss[corpus][s]) for s in sizes}
        spread = {s: max(v) - min(v) for s, v in loss[corpus].items()}
        made = {s: statistics.mean(steps[corpus][s]) for s in sizes}
        best = min(sizes, key=mean_loss.get)
        others = [c for c in sweeps if c != corpus and all(s in sweeps[c] for s in sizes)]
        predictions = {
            "tables": {s: autosize.predicted_loss(parse_size(s), made[s], args.train_frac * args.chars,
                                                     args.optimizer)
                       for s in sizes if parse_size(s) in autosize.CANDIDATES},
            "mean": {s: statistics.mean(along(sweeps[c][s], made[s]) for c in others) for s in sizes} if others
            else {},
            "ratio": {s: statistics.mean(along(sweeps[c][s], made[s]) / along(sweeps[c]["2x256"], 500)
                                         for c in others) for s in sizes} if others and "2x256" in sizes else {},
        }
        cells = []
        for rule, predicted in predictions.items():
            if not predicted:
                cells.append("-")
                continue
            pick = min(predicted, key=predicted.get)
            regret = mean_loss[pick] - mean_loss[best]
            regrets[rule].append(regret)
            cells.append(f"{pick} {regret:+.4f}")
        if "auto" in loss[corpus]:
            auto = statistics.mean(loss[corpus]["auto"]) - mean_loss[best]
            regrets["auto"].append(auto)
            cells.append(f"{'/'.join(sorted(set(chose[corpus])))} {auto:+.4f} (spread {spread['auto']:.4f})")
        else:
            cells.append("-")
        fit = ", ".join(Path(c).stem for c in others) or "none"
        made_words = ", ".join(f"{s} {made[s]:,.0f}" for s in sizes)
        print(f"| {Path(corpus).stem} (fit on: {fit}) | {made_words} | {best} {mean_loss[best]:.4f} "
              f"({spread[best]:.4f}) | {' | '.join(cells)} |")
    print()
    for rule, values in regrets.items():
        print(f"{rule}: mean regret {statistics.mean(values):+.4f}, worst {max(values):+.4f} "
              f"over {len(values)} corpora", file=sys.stderr)


if __name__ == "__main__":
    main()
