"""Would charrnn's size tables pick the best size, given the steps each size made in a budget? (issue 28)

    python benchmarks/tables_check.py --chars 1003854 results/quality-fp32emu-60s-sizes-muon-en-20261205.json
    python benchmarks/tables_check.py --chars 900000 results/quality-...-c1m-....json

Input: benchmarks/quality.py files of fixed sizes (`--num-layers L --hidden-size H`, each with several seeds) run in
one budget on one corpus. For each size: the mean (and max - min) of the best validation nats/char over its seeds
and the mean steps it made. Then, for AdamW's and Muon's tables (charrnn.training.autosize.predicted_loss), the
loss each predicts for every size after the steps it made, the size it would pick, and that pick's mean loss minus
the best size's (its regret). `--chars`: the corpus's training characters (the runs' 90 %). Muon's prediction takes
the corpus's validation shift (charrnn.training.shift, as `charrnn train` measures it at start-up) from the corpus
file the results name, where it is still there, else `--shift` (the shift measured when it was), else none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from charrnn.training import autosize  # noqa: E402


def sizes_of(record: dict) -> dict:
    """(layers, hidden) -> (mean loss, spread, mean steps, seeds) of one quality.py file's fixed-size runs."""
    out = {}
    for result in record["results"]:
        runs = result["runs"]
        model = runs[0]["model_config"]
        losses = [r["val_nats"] for r in runs]
        out[(model["num_layers"], model["hidden_size"])] = (
            statistics.mean(losses), max(losses) - min(losses), statistics.mean(r["steps"] for r in runs), len(runs))
    return out


def shift_of(corpus: str):
    """charrnn.training.shift.validation_shift of a corpus file split as the runs split it (90 % / 10 %), or None
    where the file is gone."""
    from charrnn.data.batches import split_ids
    from charrnn.data.dataset import read_corpus
    from charrnn.data.vocab import Vocab
    from charrnn.training.shift import validation_shift

    if not Path(corpus).is_file():
        return None
    text = read_corpus(corpus).text
    vocab = Vocab.from_text(text)
    splits = split_ids(vocab.encode(text), 0.1, 0.0)
    return validation_shift(splits.train, splits.val, len(vocab))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--chars", type=float, required=True, help="training characters of the corpus")
    ap.add_argument("--shift", type=float, help="the validation shift where the corpus file is gone")
    args = ap.parse_args()
    print("| file | each size: mean (spread, seeds), steps | best | AdamW's tables pick | Muon's tables pick "
          "(validation shift) |")
    print("|---|---|---|---|---|")
    for path in args.files:
        record = json.load(open(path))
        sizes = sizes_of(record)
        best = min(sizes, key=lambda s: sizes[s][0])
        shift = shift_of(record["corpus"])
        shift = args.shift if shift is None else shift
        cells = []
        for optimizer in ("adamw", "muon"):
            predicted = {s: autosize.predicted_loss(s, sizes[s][2], args.chars, optimizer, shift) for s in sizes}
            pick = min(predicted, key=predicted.get)
            cells.append(f"{pick[0]}x{pick[1]} {sizes[pick][0] - sizes[best][0]:+.4f}")
        each = "; ".join(f"{L}x{H} {m:.4f} ({s:.4f}, {n}), {steps:,.0f}"
                         for (L, H), (m, s, steps, n) in sorted(sizes.items()))
        shown = "not measured" if shift is None else f"{shift:+.3f}"
        print(f"| {Path(path).stem} | {each} | {best[0]}x{best[1]} | {cells[0]} | {cells[1]} ({shown}) |")


if __name__ == "__main__":
    main()
