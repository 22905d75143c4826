"""The "about" record each result file starts with: the machine, the date and the commit it was measured on.

    from about import about            # benchmarks/ is the script's own folder, so this imports as is
    json.dump({"about": about(), ...}, f)               # a JSON result
    f.write(json.dumps({"about": about()}) + "\n")     # the first line of a new JSONL file

Light on purpose (no torch import): the torch version comes from the installed package's metadata.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def commit() -> str:
    """HEAD's short hash, with "+changes" when the package's files differ from it; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "charrnn", "benchmarks/*.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    """CPU model, cores, Python, torch (the installed version) and the system."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": package_version("torch"), "system": platform.platform()}


def torch_machine() -> dict:
    """machine() and how torch runs here: its intra-op threads and whether the CPU has native bf16 (imports torch
    and charrnn: for the scripts that measure with them)."""
    import torch

    from charrnn.model.precision import cpu_supports_bf16

    gpu = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda} if torch.cuda.is_available() else {}
    return {**machine(), "torch_threads": torch.get_num_threads(), "native_bf16": cpu_supports_bf16(), **gpu}


def about(**extra) -> dict:
    """machine (CPU model, cores, Python, torch), date (UTC, now) and commit, plus any `extra` fields."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"machine": machine(), "date": date, "commit": commit(), **extra}


if __name__ == "__main__":
    import json

    print(json.dumps(about(), indent=1))
