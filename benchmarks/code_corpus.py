"""A large real corpus for the sweeps above tiny-shakespeare's 1 MB: the Python source of the installed packages.

    python benchmarks/code_corpus.py OUT.txt --chars 100000000

tiny-shakespeare is the only corpus shipped beside the repository and the machines reach no text site, so the corpus
dimension of the size rule (benchmarks/size_sweep.py) is measured on code: every `.py` file under this interpreter's
site-packages, in an order fixed by a hash of its path (so the validation split, the file's tail, is not one
package), reduced to printable ASCII, cut at `--chars` characters. The same packages give the same file on any
machine; the first N characters of the 100 MB file are the N-character corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import site
import string
from pathlib import Path

KEEP = set(string.printable) - {"\x0b", "\x0c", "\r"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--chars", type=int, default=100_000_000)
    args = ap.parse_args()
    roots = [Path(p) for p in site.getsitepackages()]
    files = sorted((f for root in roots for f in root.rglob("*.py")),
                   key=lambda f: hashlib.sha1(str(f.relative_to(f.anchor)).encode()).hexdigest())
    written = 0
    with open(args.out, "w", encoding="ascii") as out:
        for f in files:
            text = "".join(c for c in f.read_text(encoding="utf-8", errors="ignore") if c in KEEP)
            text = text[: args.chars - written]
            out.write(text)
            written += len(text)
            if written >= args.chars:
                break
    print(f"{written:,} characters from {len(files):,} files -> {args.out}")


if __name__ == "__main__":
    main()
