"""`charrnn` with --optimizer muon's learning-rate scale and Newton-Schulz iterations set from the environment:
MUON_LR_SCALE=2 MUON_NS_STEPS=3 python benchmarks/muon_scale.py train CORPUS --optimizer muon ... (charrnn ships
one of each, charrnn.training.step's MUON_LR_SCALE and optimizer.NS_STEPS; this lets a benchmark try others
without a switch in charrnn itself)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import charrnn.training.optimizer as optimizer  # noqa: E402
import charrnn.training.step as step  # noqa: E402
from charrnn.cli.commands import main  # noqa: E402

if "MUON_LR_SCALE" in os.environ:
    step.MUON_LR_SCALE = float(os.environ["MUON_LR_SCALE"])
if "MUON_NS_STEPS" in os.environ:
    optimizer.NS_STEPS = int(os.environ["MUON_NS_STEPS"])

if __name__ == "__main__":
    main()
