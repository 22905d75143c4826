"""Quality benchmark: how low the validation loss gets for a wall-clock budget, with charrnn's defaults.

    python benchmarks/quality.py                                   # tiny-shakespeare, 300 s, 3 runs, default tanh
    python benchmarks/quality.py --budget 60 --runs 1 --cell lstm  # any `charrnn train` option can follow
    python benchmarks/quality.py --budget 60 --sweep hidden_size=384,512,768 --sweep lr=2e-3,3e-3

Each run is a fresh `charrnn train CORPUS --val-frac 0.1 --test-frac 0 --time-budget BUDGET` process (first 90 %
train, last 10 % validation: the split nanoGPT's shakespeare_char uses). Prints val nats/char and bits/char per
run, the median, the dropout the run used (`--dropout auto` decides it from the run's speed), and the
configuration used; writes JSON to benchmarks/results/. Run it on an otherwise idle
machine: the result depends on how many characters per second the machine trains.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from about import about  # benchmarks/about.py: machine, date, commit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def run_once(corpus: str, budget: str, extra: list[str], seed: int, entry: list[str] = ("-m", "charrnn"),
             env: dict = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="charrnn-quality-") as tmp:
        run_dir = os.path.join(tmp, "run")
        cmd = [sys.executable, *entry, "train", corpus, "--val-frac", "0.1", "--test-frac", "0",
               "--time-budget", budget, "--run-dir", run_dir, "--seed", str(seed), "-q", *extra]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        wall = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        vals = [r["val_loss"] for r in rows if "val_loss" in r]
        steps = max(r["step"] for r in rows)
        rates = [r["chars_per_sec"] for r in rows if r.get("chars_per_sec")]
        sys.path.insert(0, str(ROOT))
        from charrnn.store.checkpoint import load_checkpoint

        ckpt = load_checkpoint(os.path.join(run_dir, "latest.pt"))
        return {
            "val_nats": min(vals),
            "val_bits": min(vals) / math.log(2),
            "final_val_nats": vals[-1],
            "val_curve": [[r["step"], round(r["val_loss"], 4)] for r in rows if "val_loss" in r],
            "steps": steps,
            "chars_per_sec": statistics.median(rates) if rates else None,
            "wall_s": round(wall, 1),
            "model_config": ckpt["model_config"],
            "train_config": ckpt["train_config"],
            "seed": seed,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--budget", default="300", help="time budget per run (seconds, or 90s, 5m, 1h)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (different seeds)")
    parser.add_argument("--first-seed", type=int, default=1337, help="seed of the first run; then +1 per run")
    parser.add_argument("--sweep", action="append", default=[], metavar="OPTION=V1,V2",
                        help="try every value (option name with underscores); repeat for a grid")
    parser.add_argument("--muon-lr-scale", action="append", default=[], metavar="S",
                        help="with --optimizer muon: also try these learning-rate scales (benchmarks/muon_scale.py)")
    parser.add_argument("--muon-ns-steps", action="append", default=[], metavar="N",
                        help="with --optimizer muon: also try these Newton-Schulz iteration counts (muon_scale.py)")
    parser.add_argument("--config", action="append", default=[], metavar="'OPTIONS [NAME=VALUE]'",
                        help="a configuration to run as it is (repeat: one per contender); NAME=VALUE words set "
                             "muon_scale.py's environment, e.g. --config '--optimizer muon MUON_NS_STEPS=3'")
    parser.add_argument("--interleave", action="store_true", help="run seed by seed across the configurations")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args, extra = parser.parse_known_args()

    grid_axes = []
    for spec in args.sweep:
        name, _, values = spec.partition("=")
        grid_axes.append([(name, v) for v in values.split(",")])
    grid = list(itertools.product(*grid_axes)) if grid_axes else ([] if args.config else [()])
    if args.muon_lr_scale:
        grid = [(*point, ("muon_lr_scale", s)) for point in grid for s in args.muon_lr_scale]
    if args.muon_ns_steps:
        grid = [(*point, ("muon_ns_steps", n)) for point in grid for n in args.muon_ns_steps]
    print(f"corpus {args.corpus}, budget {args.budget}, {args.runs} run(s) per configuration, "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print(f"{'configuration':<48} {'val nats':>9} {'val bits':>9} {'steps':>6} {'chars/s':>9} {'dropout':>7} "
          f"{'model':>7} {'wall s':>6}")
    configs = []  # (options, entry, env)
    for point in grid:
        options, entry, env = list(extra), ("-m", "charrnn"), {}
        for name, value in point:
            if name in ("muon_lr_scale", "muon_ns_steps"):
                entry = (str(ROOT / "benchmarks" / "muon_scale.py"),)
                env[name.upper()] = value
            else:
                options += [f"--{name.replace('_', '-')}", value]
        configs.append((options, entry, env))
    for spec in args.config:  # "--optimizer muon MUON_NS_STEPS=3": NAME=VALUE words go to muon_scale.py's env
        words = spec.split()
        env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=")[0].isupper())
        options = list(extra) + [w for w in words if not ("=" in w and w.split("=")[0].isupper())]
        configs.append((options, (str(ROOT / "benchmarks" / "muon_scale.py"),) if env else ("-m", "charrnn"), env))
    order = [(c, i) for c in range(len(configs)) for i in range(args.runs)]
    if args.interleave:  # seed by seed, every configuration: a slow hour of the machine hits them alike
        order = [(c, i) for i in range(args.runs) for c in range(len(configs))]
    runs = [[] for _ in configs]

    def label(c: int) -> str:
        options, _, env = configs[c]
        return " ".join(options + [f"({k.lower().replace('_', ' ')} {v})" for k, v in env.items()]) or "defaults"

    for c, i in order:  # each run is printed as soon as it ends
        options, entry, env = configs[c]
        r = run_once(args.corpus, args.budget, options, seed=args.first_seed + i, entry=entry, env=env)
        runs[c].append(r)
        size = f"{r['model_config']['num_layers']}x{r['model_config']['hidden_size']}"
        print(f"{label(c):<48} {r['val_nats']:9.4f} {r['val_bits']:9.4f} {r['steps']:6d} "
              f"{(r['chars_per_sec'] or 0):9.0f} {r['model_config']['dropout']!s:>7} {size:>7} {r['wall_s']:6.1f}",
              flush=True)
    results = []
    for c, (options, _, env) in enumerate(configs):
        median = statistics.median(r["val_nats"] for r in runs[c])
        if args.runs > 1:
            values = [r["val_nats"] for r in runs[c]]
            print(f"{label(c) + '  [median]':<48} {median:9.4f} {median / math.log(2):9.4f}  mean "
                  f"{statistics.mean(values):.4f} spread {max(values) - min(values):.4f}", flush=True)
        results.append({"options": options, **{k.lower(): float(v) for k, v in env.items()},
                        "median_val_nats": median, "runs": runs[c]})
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"about": about(), "corpus": args.corpus, "budget": args.budget, "load_average": os.getloadavg(),
                   "results": results}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
