"""benchmarks/ as a report (issue 29): scripts and the README at its root, raw results in benchmarks/results/, each
result file saying on which machine, when and at which commit it was measured, and every file the pages name
present."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

from conftest import ROOT

BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


def _load(name: str):
    """A benchmarks/ script as a module, as `python benchmarks/NAME.py` finds its neighbours (folder on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _about_of(path):
    text = path.read_text(encoding="utf-8")
    first = json.loads(text) if path.suffix == ".json" else json.loads(text.splitlines()[0])
    return first.get("about") if isinstance(first, dict) else None


def test_the_root_holds_scripts_and_pages_only_and_the_readme_is_short():
    strays = sorted(p.name for p in BENCH.iterdir()
                    if not (p.suffix == ".py" or p.name in ("README.md", "HISTORY.md", "results", "__pycache__")))
    assert strays == []
    assert (BENCH / "README.md").stat().st_size < 15_000
    assert "](HISTORY.md" in (BENCH / "README.md").read_text(encoding="utf-8")


def test_every_result_file_says_its_machine_date_and_commit():
    files = sorted(p for p in RESULTS.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert files, "benchmarks/results/ holds no result file"
    missing = [p.name for p in files
               if not (about := _about_of(p)) or not all(about.get(k) for k in ("machine", "date", "commit"))]
    assert missing == []


def test_every_result_file_the_pages_name_exists():
    named = set()
    for page in ("README.md", "HISTORY.md"):
        text = (BENCH / page).read_text(encoding="utf-8")
        named |= set(re.findall(r"`results/([\w.-]+\.jsonl?)`", text))
    assert named, "the pages name no result file"
    assert sorted(n for n in named if not (RESULTS / n).is_file()) == []


def test_about_names_this_checkout_and_the_date():
    record = _load("about").about(extra="x")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert record["commit"].split("+")[0] == head.stdout.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", record["date"])
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"] and record["extra"] == "x"


def test_a_new_sweep_file_starts_with_its_about_line(tmp_path, monkeypatch):
    sweep = _load("size_sweep")
    rows = iter([{"model": "1x8", "steps": 1, "val_nats": 4.0, "final_val_nats": 4.0, "wall_s": 0.1, "loadavg": 0.0},
                 {"model": "1x8", "steps": 2, "val_nats": 3.9, "final_val_nats": 3.9, "wall_s": 0.1, "loadavg": 0.0}])
    monkeypatch.setattr(sweep, "point", lambda *a, **k: next(rows))  # no training: the file's shape is the subject
    for steps in ("1", "2"):  # the second run appends to the same file
        monkeypatch.setattr(sys, "argv", ["size_sweep.py", "--out", str(tmp_path), "--sizes", "1x8", "--steps", steps])
        sweep.main()
    lines = [json.loads(line) for line in (tmp_path / "size-sweep.jsonl").read_text().splitlines()]
    assert list(lines[0]) == ["about"] and lines[0]["about"]["commit"]
    assert [r.get("steps") for r in lines[1:]] == [1, 2]  # one about line, then the rows in order
