"""Does load move the size choice, and what does start-up cost once the machine's speeds are kept? (issue 28)

    python benchmarks/autosize_together.py                      # tiny-shakespeare, 60 s, 3 runs at once
    python benchmarks/autosize_together.py --budget 5 --runs 2 --corpus some.txt -- --batch-size 4 --seq-len 16

In a fresh CHARRNN_HOME (a temp directory, so the repository's speeds.json is not touched), three phases of
`charrnn train CORPUS --time-budget BUDGET` with no size option, each a fresh process:

  alone     one run, which times the candidate sizes and keeps their speeds (or says the machine was too busy);
  known     one run alone again, reading them: its start-up is what a budget pays once the speeds are known;
  together  RUNS runs started at once, reading the kept speeds: each should choose what `alone` chose, and start-up
            (wall time before the first step) should be a small share of the budget (the issue's target: 5 % of 60 s);
  cold      RUNS runs started at once in another fresh home: one times, the others wait for it and read its speeds.

Per run: the chosen size, where its speeds came from (the `model speeds:` log line), start-up seconds (from the
process's start to its first step: when its first `step N` line arrived less the training time its metrics.jsonl
gives for step N), the seconds outside training in all (start-up, validations, the final save and exit: wall less
training) and steps made against the steps the choice expected. Writes JSON to benchmarks/results/ (machine, date,
commit inside). Run it on an otherwise idle machine: `together` loads it with RUNS trainers on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from about import about, machine  # noqa: E402  (machine, date, commit: every result file carries them)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


class Run:
    """One `charrnn train` process, its stderr read as it comes (each line's arrival time kept)."""

    def __init__(self, corpus: str, budget: str, home: str, extra: list[str]):
        self.run_dir = tempfile.mkdtemp(prefix="run-", dir=home)
        os.rmdir(self.run_dir)  # the trainer makes it
        cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--val-frac", "0.1", "--test-frac", "0",
               "--time-budget", budget, "--run-dir", self.run_dir, *extra]
        env = dict(os.environ, CHARRNN_HOME=home, PYTHONPATH=str(ROOT))
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            self.lines.append((time.time() - self.started, raw.decode("utf-8", errors="replace")))

    def finish(self) -> dict:
        self.proc.wait()
        self.reader.join()
        err = "".join(line for _, line in self.lines)
        row = parse(err)
        row["returncode"] = self.proc.returncode
        if self.proc.returncode != 0:
            row["stderr_tail"] = err[-2000:]
        first = next(((t, int(m.group(1))) for t, line in self.lines
                      for m in [re.match(r"step (\d+) ", line)] if m), None)
        try:
            with open(os.path.join(self.run_dir, "metrics.jsonl")) as f:
                elapsed = {r["step"]: r["elapsed"] for r in map(json.loads, f) if "elapsed" in r}
        except OSError:
            elapsed = {}
        if first and first[1] in elapsed:
            row["first_step_s"] = round(first[0] - elapsed[first[1]], 2)
        return row


def parse(err: str) -> dict:
    size = re.search(r"model size (\d+x\d+): (.*)", err)
    speeds = re.search(r"model speeds: (.*)", err)
    done = re.search(r"done: (\d+) steps in ([\d.]+)s of training \(([\d.]+)s wall\)", err)
    expected = re.search(rf"{size.group(1)} ~([\d,]+)", size.group(2)) if size else None
    row = {"size": size.group(1) if size else None, "why": size.group(2) if size else None,
           "speeds": speeds.group(1) if speeds else None,
           "expected_steps": int(expected.group(1).replace(",", "")) if expected else None}
    if done:
        steps, training, wall = int(done.group(1)), float(done.group(2)), float(done.group(3))
        row.update(steps=steps, training_s=training, wall_s=wall, outside_training_s=round(wall - training, 2))
    return row


def phase(n: int, corpus: str, budget: str, home: str, extra: list[str]) -> list[dict]:
    runs = [Run(corpus, budget, home, extra) for _ in range(n)]
    return [run.finish() for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--budget", default="60")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/autosize-together-DATE.json)")
    parser.add_argument("extra", nargs="*", help="more `charrnn train` options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charrnn-autosize-") as tmp:
        warm, cold = os.path.join(tmp, "warm"), os.path.join(tmp, "cold")
        os.makedirs(warm)
        os.makedirs(cold)
        result = {"about": about(benchmark="autosize_together"), "machine": machine(), "corpus": args.corpus, "budget": args.budget, "runs": args.runs,
                  "extra": args.extra}
        result["alone"] = phase(1, args.corpus, args.budget, warm, args.extra)
        result["known"] = phase(1, args.corpus, args.budget, warm, args.extra)
        result["together"] = phase(args.runs, args.corpus, args.budget, warm, args.extra)
        result["cold"] = phase(args.runs, args.corpus, args.budget, cold, args.extra)
    alone = result["alone"][0]["size"]
    result["together_choose_as_alone"] = all(r["size"] == alone for r in result["together"])
    result["cold_choose_alike"] = len({r["size"] for r in result["cold"]}) == 1
    result["known_chooses_as_alone"] = result["known"][0]["size"] == alone
    for name in ("alone", "known", "together", "cold"):
        for r in result[name]:
            print(f"{name:9s} {r['size']}  start-up {r.get('first_step_s')} s (outside training "
                  f"{r.get('outside_training_s')} s)  steps {r.get('steps')} of "
                  f"~{r['expected_steps']}  speeds: {r['speeds']}")
    print(f"together chose as alone: {result['together_choose_as_alone']}; cold chose alike: "
          f"{result['cold_choose_alike']}")
    out = args.out or str(ROOT / "benchmarks" / "results" / f"autosize-together-{time.strftime('%Y%m%d-%H%M')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
