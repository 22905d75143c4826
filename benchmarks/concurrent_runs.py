"""Runs training at once on one CPU: steps per second of each, sharing the threads (charrnn/training/sharing.py)
and not (each run given its own TMPDIR, so it sees no other: every run on all the threads, as before sharing).

    python benchmarks/concurrent_runs.py                   # 3x256, 150 steps, 1, 2 and 3 runs at once
    python benchmarks/concurrent_runs.py --size 2x128 --counts 1,3

Quiet machine only. Each run is `charrnn train CORPUS --hidden-size H --num-layers L --max-steps N` with no
evaluation before the end; its speed is taken from metrics.jsonl between its 10th step and its last, so start-up
is left out. Writes OUT/concurrent-runs-DATE.json.
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


def together(corpus: str, size: str, steps: int, count: int, shared: bool) -> list[float]:
    L, H = size.split("x")
    with tempfile.TemporaryDirectory(prefix="charrnn-concurrent-") as tmp:
        procs = []
        for i in range(count):
            own_tmp = os.path.join(tmp, "tmp" if shared else f"tmp{i}")
            os.makedirs(own_tmp, exist_ok=True)
            env = {**os.environ, "TMPDIR": own_tmp}
            cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--hidden-size", H, "--num-layers", L,
                   "--max-steps", str(steps), "--eval-every", str(10 * steps), "--sample-every", "0",
                   "--run-dir", os.path.join(tmp, f"run{i}"), "--seed", str(i + 1), "-q"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a run failed ({p.returncode})")
        speeds = []
        for i in range(count):
            rows = [json.loads(line) for line in open(os.path.join(tmp, f"run{i}", "metrics.jsonl"))]
            rows = [r for r in rows if "elapsed" in r and "step" in r]
            a, b = rows[0], rows[-1]
            speeds.append(round((b["step"] - a["step"]) / (b["elapsed"] - a["elapsed"]), 2))
        return speeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--size", default="3x256", help="LxH")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--counts", default="1,2,3")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    corpus = os.path.abspath(args.corpus)
    points = []
    for repeat in range(args.repeats):  # interleaved, so a drift in the machine's speed touches every case alike
        for count in map(int, args.counts.split(",")):
            for shared in ([True] if count == 1 else [True, False]):
                speeds = together(corpus, args.size, args.steps, count, shared)
                points.append({"size": args.size, "runs": count, "shared": shared, "steps_per_s": speeds,
                               "total": round(sum(speeds), 2), "repeat": repeat})
                print(f"{count} run(s) {'sharing' if shared else 'apart  '}: {', '.join(map(str, speeds))} steps/s "
                      f"(total {sum(speeds):.1f})", flush=True)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"concurrent-runs-{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json")
    with open(out, "w") as f:
        json.dump({"about": about(corpus=corpus), "points": points}, f, indent=1)
    print(out)


if __name__ == "__main__":
    main()
