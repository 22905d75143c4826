"""Tiny trained runs for the export tests, one per cell, trained once per test session (through the library)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_corpus

CELLS = ["tanh", "gru", "lstm"]
_RUNS: dict = {}


def trained_run(cell: str, base: Path) -> Path:
    """The run directory of a tiny 2x32 `cell` model trained for 20 steps on make_corpus's text (8,000 chars)."""
    if cell not in _RUNS:
        import charrnn

        corpus = make_corpus(base / f"corpus-{cell}.txt", n_chars=8000)
        result = charrnn.train(
            str(corpus),
            charrnn.ModelConfig(hidden_size=32, num_layers=2, cell=cell),
            charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=20, eval_every=10, warmup_steps=5,
                                val_frac=0.1, test_frac=0.1),
            run_dir=str(base / f"run-{cell}"),
            progress=False,
        )
        _RUNS[cell] = Path(result.run_dir)
    return _RUNS[cell]


def doc_block(marker: str) -> str:
    """The ```python block of docs/export.md that contains `marker`."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks in docs/export.md contain {marker!r}"
    return blocks[0]
