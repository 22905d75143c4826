"""What each step learns (issue 28): validation loss after the same number of steps for variants of the optimiser
and schedule, several seeds, several corpora.

    python benchmarks/step_experiments.py --corpus ../shared/corpora/tinyshakespeare.txt --corpus CAL/c-1000000.txt
    python benchmarks/step_experiments.py --variants base,muon --steps 500 --seeds 1,2,3 --jobs 2

Each point is `charrnn train CORPUS --val-frac 0.1 --test-frac 0 --max-steps N --precision fp32 --seed S` with the
variant's options and every other option at its default (--ema included); Muon runs through muon_train.py. Loss
after N steps does not depend on the machine's speed, so `--jobs` points run at once, each with one thread
(OMP_NUM_THREADS=1). Only Muon costs more per step than the base; `--speed` times that (quiet machine only) so a
comparison at equal time can give it fewer steps. Writes JSON lines to OUT/step-experiments.jsonl as points finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from about import about  # benchmarks/about.py: machine, date, commit

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

VARIANTS = {  # name: (options, environment); "muon*" run through muon_train.py
    "base": ([], {}),
    "muon": ([], {}),
    "muon-lr2": ([], {"MUON_LR_SCALE": "2"}),
    "muon-lr4": ([], {"MUON_LR_SCALE": "4"}),
    "own-lr2": (["--optimizer", "muon"], {"MUON_LR_SCALE": "2", "MUON_NS_STEPS": "5"}),  # charrnn's Muon (fp32 Newton-Schulz)
    "own-ns3": (["--optimizer", "muon"], {"MUON_LR_SCALE": "2", "MUON_NS_STEPS": "3"}),
    "own-ns2": (["--optimizer", "muon"], {"MUON_LR_SCALE": "2", "MUON_NS_STEPS": "2"}),
    "wd0": (["--weight-decay", "0"], {}),
    "wd0.1": (["--weight-decay", "0.1"], {}),
    "warmup0": (["--warmup-steps", "0"], {}),
    "warmup150": (["--warmup-steps", "150"], {}),
    "minlr0": (["--min-lr-frac", "0"], {}),
    "lr0.002": (["--lr", "0.002"], {}),
    "lr0.005": (["--lr", "0.005"], {}),
}


def command(variant: str, corpus: str, size: str, steps: int, seed: int, run_dir: str) -> tuple[list, dict]:
    options, env = VARIANTS[variant]
    L, H = size.split("x")
    entry = ([str(HERE / "muon_train.py")] if variant.startswith("muon") else
             [str(HERE / "muon_scale.py")] if variant.startswith("own") else ["-m", "charrnn"])
    cmd = [sys.executable, *entry, "train", corpus, "--val-frac", "0.1", "--test-frac", "0", "--max-steps",
           str(steps), "--hidden-size", H, "--num-layers", L, "--precision", "fp32", "--run-dir", run_dir,
           "--seed", str(seed), "-q", *options]
    if not variant.startswith("own"):  # the AdamW baseline and its one-change variants (muon_train.py: torch's Muon)
        cmd += ["--optimizer", "adamw"]
    return cmd, env


def point(variant: str, corpus: str, size: str, steps: int, seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="charrnn-exp-") as tmp:
        run_dir = os.path.join(tmp, "run")
        cmd, env = command(variant, corpus, size, steps, seed, run_dir)
        env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        vals = [r["val_loss"] for r in rows if "val_loss" in r]
        steps_rows = [r for r in rows if "elapsed" in r and "step" in r]
        a, b = steps_rows[1], steps_rows[-1]  # the first row holds warm-up costs
        return {"variant": variant, "corpus": os.path.basename(corpus), "model": size, "steps": steps, "seed": seed,
                "val_nats": min(vals), "final_val_nats": vals[-1], "wall_s": round(time.time() - start, 1),
                "steps_per_s": round((b["step"] - a["step"]) / (b["elapsed"] - a["elapsed"]), 2),
                "threads": threads, "loadavg": os.getloadavg()[0]}


def table(paths: list) -> str:
    """A markdown table: one row per variant and step count, one column per corpus, "mean ± spread (n seeds)"."""
    points: dict = {}
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if "variant" in r and not r.get("speed"):
                points.setdefault((r["variant"], r["steps"]), {}).setdefault(r["corpus"], []).append(r["val_nats"])
    corpora = sorted({c for by in points.values() for c in by})
    rows = [f"| variant | steps | {' | '.join(corpora)} |", "|---|---:|" + "---:|" * len(corpora)]
    for (variant, steps), by in sorted(points.items(), key=lambda kv: (kv[0][1] != 500, kv[0])):
        cells = []
        for c in corpora:
            v = by.get(c, [])
            cells.append(f"{sum(v) / len(v):.4f} ± {max(v) - min(v):.4f} ({len(v)})" if v else "")
        rows.append(f"| {variant} | {steps} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", help="repeat for several corpora (not with --table)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size", default="2x256", help="LxH")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--muon-steps", type=int, help="steps for the muon variants (equal time: see --speed)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--jobs", type=int, default=2, help="points at once, one thread each")
    ap.add_argument("--speed", action="store_true",
                    help="instead: steps per second of base and muon alone with all threads (quiet machine)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--table", nargs="+", metavar="JSONL",
                    help="instead: print the mean and spread (max - min) over seeds of each point in these files")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.corpus:
        ap.error("--corpus is required")
    args.corpus = [os.path.abspath(c) for c in args.corpus]
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "step-experiments.jsonl")
    if not os.path.exists(out):
        with open(out, "w") as f:
            f.write(json.dumps({"about": about(corpus=args.corpus[0])}) + "\n")
    if args.speed:
        import torch

        threads = torch.get_num_threads()
        for variant in ["base", "muon", "base", "muon"]:
            r = point(variant, args.corpus[0], args.size, 150, 1, threads)
            print(f"{variant:>10} {r['model']}: {r['steps_per_s']:.2f} steps/s ({threads} threads)", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps({**r, "speed": True}) + "\n")
        return
    done = {(r["variant"], r["corpus"], r["steps"], r["seed"]) for r in map(json.loads, open(out))
            if "variant" in r and not r.get("speed") and r["model"] == args.size}  # a restart goes on from there
    todo = []
    for seed in map(int, args.seeds.split(",")):  # every variant at seed 1 before seed 2: partial runs are useful
        for corpus in args.corpus:
            for variant in args.variants.split(","):
                steps = args.muon_steps if variant.startswith("muon") and args.muon_steps else args.steps
                if (variant, os.path.basename(corpus), steps, seed) not in done:
                    todo.append((variant, corpus, args.size, steps, seed, 1))

    def run(job):
        r = point(*job)
        print(f"{r['variant']:>10} {r['corpus']:>22} {r['model']} {r['steps']} steps seed {r['seed']}: "
              f"val {r['val_nats']:.4f} (final {r['final_val_nats']:.4f})", flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))


if __name__ == "__main__":
    main()
