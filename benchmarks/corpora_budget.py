"""The size choice on corpora of several kinds, at a time budget (issue 28): auto against each size trained.

    python benchmarks/calibration_corpora.py CAL                 # once: CAL/c-1000000.txt, french-..., python-...
    python benchmarks/corpora_budget.py CAL/*-1000000.txt        # 60 s, seeds 1-3, auto + 2x128 2x256 2x512 3x256
    python benchmarks/corpora_budget.py FILES --budget 300 --seeds 1,2,3 --sizes 2x256,2x512
    python benchmarks/corpora_budget.py --summary A.jsonl B.jsonl   # the table of several files (a point in a later
                                                                    # file replaces the same corpus/size/seed earlier)

Each point is a fresh `charrnn train CORPUS --val-frac 0.1 --test-frac 0 --time-budget B --seed S` (benchmarks/
quality.py's run), with no size option (auto) or with --num-layers/--hidden-size, at the defaults otherwise (the
machine's default route, `--ema`, `--dropout auto`). Seeds are the outer loop, so every finished seed is a whole
table. All runs share one CHARRNN_HOME (a fresh one, or --home), so auto times the candidates once and every later
auto run reads the same kept speeds. Points append to results/corpora-budget-Bs-DATE.jsonl (the first line: machine,
date, commit); the summary gives, per corpus, each size's mean best validation loss over the seeds and its spread
(max - min), what auto chose, and auto's mean minus the best size's mean. Needs a quiet machine: the steps a budget
makes are the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from about import about  # noqa: E402  (benchmarks/about.py: machine, date, commit)
from quality import run_once  # noqa: E402  (one `charrnn train --time-budget` run and its best validation loss)

HERE = Path(__file__).resolve().parent


def size_options(size: str) -> list[str]:
    if size == "auto":
        return []
    layers, hidden = size.split("x")
    return ["--num-layers", layers, "--hidden-size", hidden]


def load_points(files: list[str]) -> list[dict]:
    """The points of several JSONL files, a later file's point replacing the same corpus/size/seed."""
    points = {}
    for name in files:
        with open(name) as f:
            for row in [json.loads(line) for line in f][1:]:
                points[row["corpus"], row["size"], row["seed"]] = row
    return list(points.values())


def summary(rows: list[dict]) -> str:
    by = defaultdict(lambda: defaultdict(list))
    chosen = defaultdict(list)
    for r in rows:
        by[r["corpus"]][r["size"]].append(r["val_nats"])
        if r["size"] == "auto":
            chosen[r["corpus"]].append(r["chose"])
    lines = ["| corpus | auto (chose) | best size | auto - best | each size: mean (spread, n) |",
             "|---|---|---|---|---|"]
    for corpus, sizes in by.items():
        means = {s: statistics.mean(v) for s, v in sizes.items()}
        fixed = {s: m for s, m in means.items() if s != "auto"}
        best = min(fixed, key=fixed.get) if fixed else None
        each = "; ".join(f"{s} {means[s]:.4f} ({max(v) - min(v):.4f}, {len(v)})" for s, v in sorted(sizes.items()))
        auto = f"{means['auto']:.4f} ({', '.join(sorted(set(chosen[corpus])))})" if "auto" in means else "-"
        gap = f"{means['auto'] - fixed[best]:+.4f}" if "auto" in means and best else "-"
        lines.append(f"| {Path(corpus).name} | {auto} | {best} {fixed.get(best, float('nan')):.4f} | {gap} | {each} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", nargs="*")
    ap.add_argument("--budget", default="60")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--sizes", default="auto,2x128,2x256,2x512,3x256")
    ap.add_argument("--home", default=None, help="CHARRNN_HOME for every run (default: a fresh temp directory)")
    ap.add_argument("--summary", nargs="+", default=None, help="print the table of JSONL files and stop")
    ap.add_argument("--out", default=str(HERE / "results"))
    args, extra = ap.parse_known_args()
    if args.summary:
        print(summary(load_points(args.summary)))
        return
    if not args.corpora:
        ap.error("name at least one corpus file")
    home = args.home or tempfile.mkdtemp(prefix="charrnn-home-")
    os.environ["CHARRNN_HOME"] = home
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"corpora-budget-{args.budget}s-{time.strftime('%Y%m%d-%H%M')}.jsonl")
    rows = []
    with open(path, "w") as f:
        f.write(json.dumps({"about": about(benchmark="corpora_budget", budget=args.budget, home=home,
                                           extra=extra, loadavg_start=os.getloadavg())}) + "\n")
        for seed in [int(s) for s in args.seeds.split(",")]:
            for corpus in args.corpora:
                for size in args.sizes.split(","):
                    r = run_once(os.path.abspath(corpus), args.budget, size_options(size) + extra, seed)
                    mc = r["model_config"]
                    row = {"corpus": os.path.basename(corpus), "size": size, "seed": seed, "val_nats": r["val_nats"],
                           "chose": f"{mc['num_layers']}x{mc['hidden_size']}", "steps": r["steps"],
                           "max_steps": r["train_config"].get("max_steps"), "dropout": mc.get("dropout"),
                           "wall_s": r["wall_s"], "chars_per_sec": r["chars_per_sec"], "loadavg": os.getloadavg()[0]}
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"seed {seed} {row['corpus']:<24} {size:<6} -> {row['chose']:<6} {row['val_nats']:.4f} "
                          f"{row['steps']:5d} steps {row['wall_s']:6.1f} s", flush=True)
            print(summary(rows), flush=True)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
