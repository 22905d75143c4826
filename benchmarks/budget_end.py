"""How close `charrnn train --time-budget B` ends to B, measured from outside: the wall time from starting the
process to its exit (Python's start-up, imports, the final validation and save, the summary and the interpreter's
exit all included), on a quiet machine and with CPU-bound processes beside it.

    python benchmarks/budget_end.py                               # tiny-shakespeare, 60 s, 3 runs quiet, 3 loaded
    python benchmarks/budget_end.py --budget 20 --runs 1 --load 0  # a quick look
    python benchmarks/budget_end.py --corpus c.txt --budget 8 --runs 1 --load 1 -- --hidden-size 32

The README promises: within about a second of the budget on a quiet machine, within 2 % of it under load. Each
row gives the wall time, how far it is past the budget (negative: inside it) and whether it keeps that promise.
Options after `--` go to `charrnn train`. Writes JSON (machine, date, commit inside) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from about import about, commit  # noqa: E402  (machine, date, commit: every result file carries them)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def run_once(corpus: str, budget: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="charrnn-budget-") as tmp:
        cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--time-budget", f"{budget:g}s", "--run-dir",
               os.path.join(tmp, "run"), "-q", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return {"wall": round(wall, 3), "past_budget": round(wall - budget, 3)}


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--budget", type=float, default=60.0, help="seconds")
    parser.add_argument("--runs", type=int, default=3, help="runs quiet, and as many beside --load busy loops")
    parser.add_argument("--load", type=int, default=2, help="CPU-bound processes beside the loaded runs (0: none)")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/budget-end-DATE.json)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rows = []
    for load in ([0, args.load] if args.load else [0]):
        for i in range(args.runs):
            loops = busy_loops(load)
            try:
                row = run_once(args.corpus, args.budget, extra)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
            allowed = 1.0 if load == 0 else 0.02 * args.budget
            row.update(load=load, run=i + 1, allowed=allowed, kept=row["past_budget"] <= allowed)
            rows.append(row)
            print(f"load {load}  run {i + 1}: wall {row['wall']:.2f} s, {row['past_budget']:+.2f} s past the "
                  f"{args.budget:g} s budget (allowed {allowed:.2f}): {'kept' if row['kept'] else 'MISSED'}")
    now = datetime.datetime.now(datetime.timezone.utc)
    result = {"about": about(benchmark="budget_end"), "machine": {"node": platform.node(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "date": now.isoformat(timespec="seconds"), "commit": commit(), "corpus": args.corpus,
              "budget": args.budget, "extra": extra, "rows": rows}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"budget-end-{now:%Y%m%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
