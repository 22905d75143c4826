"""Calibration corpora of several kinds for the size choice (issue 28), made from Debian's packages.

    python benchmarks/calibration_corpora.py OUT_DIR [--kinds c,french,python,english] [--sizes 1000000,5000000,10000000]

Writes OUT_DIR/KIND-SIZE.txt for every kind and size (SIZE in characters; a kind with less text than a size gets
no file of that size, and the script says so) and OUT_DIR/corpora.json (kind, size, characters, distinct
characters, sha256, the source package and its version). Nothing here is downloaded by charrnn: the packages come
from the Debian archive through `apt-get download` (run `apt-get update` once first), the Python source from this
interpreter's site-packages, the English prose from ../shared/corpora.

- c: the Linux kernel's `.c` and `.h` files from Debian's `linux-source-6.1` (the corpus of the classic char-rnn
  write-up), in an order fixed by a hash of the path so that the validation split (the file's tail) is not one
  subsystem; printable ASCII plus newline and tab.
- french: the French manual pages of Debian's `manpages-fr`, the roff markup stripped (requests dropped, font
  escapes removed, the text of `.B`/`.I`/`.SH` kept), in the same hashed order; UTF-8 kept as it is.
- python: the Python source of the installed packages (benchmarks/code_corpus.py's rule).
- english: tiny-shakespeare (1,115,394 characters: only the 1 MB size).
- russian (held out, not in the default --kinds): the Russian manual pages of Debian's `manpages-ru`, made as
  french is: prose with a larger alphabet, to check the choice on a corpus no table was fit on.

The first N characters of the large file are the N-character corpus, as in code_corpus.py.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import re
import string
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
ASCII = set(string.printable) - {"\x0b", "\x0c", "\r"}


def _hashed(names):
    return sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())


def _download(package: str, where: Path) -> tuple[Path, str]:
    """The .deb of `package` from the Debian archive (apt-get download), and its version."""
    subprocess.run(["apt-get", "download", "-q", package], cwd=where, check=True, stdout=subprocess.DEVNULL)
    deb = next(where.glob(f"{package}_*.deb"))
    version = deb.name.split("_")[1]
    return deb, version


def _unpack(deb: Path, where: Path) -> Path:
    out = where / (deb.stem + ".d")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


def c_text(limit: int, work: Path) -> tuple[str, str]:
    deb, version = _download("linux-source-6.1", work)
    tree = _unpack(deb, work)
    tarball = next(tree.rglob("linux-source-*.tar.xz"))
    files = {}
    with lzma.open(tarball) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith((".c", ".h")):
                data = tar.extractfile(member).read().decode("utf-8", errors="ignore")
                files[member.name] = "".join(c for c in data if c in ASCII)
    return _join(files, limit), f"linux-source-6.1 {version}"


ROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
ROFF_ESCAPES = {r"\-": "-", r"\(aq": "'", r"\(cq": "'", r"\(dq": '"', r"\(em": "—", r"\(en": "–", r"\e": "\\",
                r"\ ": " ", r"\,": "", r"\/": "", r"\~": " ", r"\&": "", r"\|": "", r"\^": "", r"\(bu": "•", r"\(co": "©",
                r"\(Fo": "«", r"\(Fc": "»", r"\[Fo]": "«", r"\[Fc]": "»", r"\(rs": "\\", r"\*(lq": "“",
                r"\*(rq": "”"}
TBL_FORMAT = re.compile(r"^[lcrnsaLCRNSA_|^ 0-9pwi().-]+\.$")
TEXT_MACROS = re.compile(r"^\.(B|I|BI|BR|IB|IR|RB|RI|SH|SS|TP|IP|SM|SB)\b\s*(.*)$")


def strip_roff(source: str) -> str:
    out = []
    for line in source.splitlines():
        if line.startswith(("'\\\"", ".\\\"", "'''")):
            continue  # comments
        m = TEXT_MACROS.match(line)
        if m:
            line = m.group(2).replace('"', "")
            if not line:
                continue
        elif line.startswith((".", "'")) or TBL_FORMAT.match(line):
            continue  # other requests and macros, tbl's column formats: layout, not text
        for k, v in ROFF_ESCAPES.items():
            line = line.replace(k, v)
        line = ROFF_FONT.sub("", line)
        line = re.sub(r"\\[(\[][^ ]{0,4}", "", line)  # any other named character left
        out.append(line)
    return "\n".join(out) + "\n"


# the character-set tables of man7 (iso_8859-*, koi8-*, cp125*, ...) are tables of code points, not prose
CHARSET_PAGES = re.compile(r"^(iso[_-]?8859|latin|koi8|cp125|ascii|armscii|charsets|utf-?8|unicode|georgian)", re.I)


def _manpages(language: str, limit: int, work: Path) -> tuple[str, str]:
    deb, version = _download(f"manpages-{language}", work)
    tree = _unpack(deb, work)
    files = {}
    for page in tree.rglob("*.gz"):
        if f"/man/{language}" not in str(page) or CHARSET_PAGES.search(page.name):
            continue
        files[str(page.relative_to(tree))] = strip_roff(gzip.open(page, "rt", encoding="utf-8", errors="ignore").read())
    return _join(files, limit), f"manpages-{language} {version}"


def french_text(limit: int, work: Path) -> tuple[str, str]:
    return _manpages("fr", limit, work)


def russian_text(limit: int, work: Path) -> tuple[str, str]:
    return _manpages("ru", limit, work)


def python_text(limit: int, work: Path) -> tuple[str, str]:
    out = work / "python.txt"
    subprocess.run(["python3", str(Path(__file__).with_name("code_corpus.py")), str(out), "--chars", str(limit)],
                   check=True, stdout=subprocess.DEVNULL)
    return out.read_text(encoding="ascii"), "site-packages Python source (code_corpus.py)"


def english_text(limit: int, work: Path) -> tuple[str, str]:
    return SHAKESPEARE.read_text(encoding="utf-8")[:limit], "tiny-shakespeare (../shared/corpora)"


def _join(files: dict, limit: int) -> str:
    parts, size = [], 0
    for name in _hashed(files):
        parts.append(files[name])
        size += len(files[name])
        if size >= limit:
            break
    return "".join(parts)[:limit]


KINDS = {"c": c_text, "french": french_text, "python": python_text, "english": english_text}
# kept out of the tables: a held-out kind with a larger alphabet (Cyrillic and Latin, ~150-170 distinct characters)
HELD_OUT = {"russian": russian_text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sizes", default="1000000,5000000,10000000")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    index_path = out_dir / "corpora.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else []
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            text, source = {**KINDS, **HELD_OUT}[kind](max(sizes), Path(tmp))
        for size in sizes:
            if len(text) < size:
                print(f"{kind}: {len(text):,} characters, fewer than {size:,}: no {kind}-{size} corpus")
                continue
            piece = text[:size]
            path = out_dir / f"{kind}-{size}.txt"
            path.write_text(piece, encoding="utf-8")
            row = {"kind": kind, "size": size, "file": path.name, "characters": len(piece),
                   "distinct": len(set(piece)), "sha256": hashlib.sha256(piece.encode()).hexdigest(),
                   "source": source}
            index = [r for r in index if r["file"] != path.name] + [row]
            print(f"{kind}-{size}: {len(piece):,} characters, {len(set(piece))} distinct, from {source}")
    index_path.write_text(json.dumps(sorted(index, key=lambda r: r["file"]), indent=1) + "\n")


if __name__ == "__main__":
    main()
