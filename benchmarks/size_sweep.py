"""The sweep behind the model-size rule: validation loss after N steps, for each model size, in steps.

    python benchmarks/size_sweep.py                          # the default grid on tiny-shakespeare
    python benchmarks/size_sweep.py --sizes 2x128,2x256 --steps 125,250,500 --out benchmarks/results

Each point is a fresh `charrnn train CORPUS --val-frac 0.1 --test-frac 0 --max-steps N --hidden-size H
--num-layers L --precision fp32 --seed S` (the schedule, warm-up and `--dropout auto` all follow N, as they follow a
time budget's step count). Loss after N steps does not depend on how fast the machine is, so the sweep can run on
any machine, busy or not; what a machine adds is its speed per size, which `charrnn train` measures at start-up.
Prints one line per point (best validation nats/char) and writes JSON lines (one per point, appended as they
finish) to OUT/size-sweep.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from about import about  # benchmarks/about.py: machine, date, commit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def point(corpus: str, L: int, H: int, steps: int, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="charrnn-sweep-") as tmp:
        run_dir = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--val-frac", "0.1", "--test-frac", "0",
               "--max-steps", str(steps), "--hidden-size", str(H), "--num-layers", str(L), "--precision", "fp32",
               "--run-dir", run_dir, "--seed", str(seed), "-q", *extra]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        vals = [(r["val_loss"], r.get("step")) for r in rows if "val_loss" in r]
        best = min(vals, key=lambda v: v[0])
        return {"model": f"{L}x{H}", "steps": steps, "seed": seed, "options": extra, "val_nats": best[0],
                "best_step": best[1], "final_val_nats": vals[-1][0], "wall_s": round(time.time() - start, 1),
                "loadavg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--sizes", default="2x128,2x256,2x512", help="LxH, comma-separated")
    ap.add_argument("--steps", default="125,250,500,1000,2000,4000", help="step counts, comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args, extra = ap.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "size-sweep.jsonl")
    if not os.path.exists(out):  # a new file starts with where and when it was measured
        with open(out, "w") as f:
            f.write(json.dumps({"about": about(corpus=args.corpus)}) + "\n")
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    for steps in map(int, args.steps.split(",")):  # every size at N before any at 2N: partial sweeps are useful
        for L, H in sizes:
            r = point(args.corpus, L, H, steps, args.seed, extra)
            print(f"{r['model']:>7} {steps:6d} steps: val {r['val_nats']:.4f} (final {r['final_val_nats']:.4f}) "
                  f"in {r['wall_s']:.0f} s, load {r['loadavg']:.1f}", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
