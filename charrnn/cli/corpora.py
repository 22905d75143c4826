"""`charrnn corpora`: the named corpora `charrnn train NAME` downloads, and whether each is cached."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer


def corpora(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
):
    """List the named corpora `charrnn train NAME` downloads, and whether each is cached.

    Example: charrnn corpora
    """
    from ..data.corpora import list_corpora

    rows = list_corpora()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    lines = []
    for row in rows:
        state = "cached" if row["cached"] else "not downloaded yet"
        lines.append(f"{row['name']:<14} {row['description']}")
        lines.append(f"{'':<14} {row['size']:,} bytes, sha256 {row['sha256']}")
        lines.append(f"{'':<14} {row['url']}")
        lines.append(f"{'':<14} {row['path']} ({state})")
    sys.stdout.write("\n".join(lines) + "\n")
