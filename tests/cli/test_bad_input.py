"""Bad input: damaged and hostile checkpoints, bad corpora, odd text, bad options, a non-UTF-8 locale.

Each test runs the real CLI in a subprocess and checks the exit code, the one-line message and what is on disk.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from pathlib import Path

import pytest

from conftest import TINY, assert_one_line_error, cli_env, make_corpus, run_cli

CORRUPT = "checkpoint is incomplete or corrupt"


def env(**extra) -> dict:
    return cli_env(OMP_NUM_THREADS=1, **extra)


def load(path):
    from charrnn.store.checkpoint import load_checkpoint

    return load_checkpoint(str(path))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: missing, damaged, hostile, from a GPU


def test_missing_checkpoint_exits_66(tmp_path):
    assert_one_line_error(run_cli("sample", tmp_path / "nope.pt", env=env()), 66, "no such checkpoint")
    empty_dir = tmp_path / "empty-run"
    empty_dir.mkdir()
    assert_one_line_error(run_cli("eval", empty_dir, env=env()), 66, "no checkpoint in directory")
    # Tests run as root, which reads any file whatever its mode; /proc/self/mem fails every read() with EIO,
    # which is what an unreadable file looks like to charrnn.
    assert_one_line_error(run_cli("sample", "/proc/self/mem", env=env()), 66, "cannot read checkpoint")


def _damaged(source: bytes, how: str) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return source[: len(source) // 2]
    if how == "bit-flipped":  # one bit in the last stored tensor's data: torch reads it happily, the digest does not
        with zipfile.ZipFile(_io(source)) as z:
            info = [i for i in z.infolist() if "/data/" in i.filename][-1]
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
        data = bytearray(source)
        data[offset] ^= 0x10
        return bytes(data)
    if how == "garbage":
        return random.Random(0).randbytes(len(source))
    raise ValueError(how)


def _io(data: bytes):
    import io

    return io.BytesIO(data)


@pytest.mark.parametrize("how", ["empty", "truncated", "bit-flipped", "garbage"])
def test_damaged_checkpoint_exits_65(tiny_run, tmp_path, how):
    path = tmp_path / "latest.pt"
    path.write_bytes(_damaged((tiny_run / "latest.pt").read_bytes(), how))
    assert_one_line_error(run_cli("sample", path, "-n", "5", env=env()), 65, CORRUPT, str(path))


def test_every_damaged_byte_range_is_refused_by_load_checkpoint(tiny_run, tmp_path):
    """Library level, so many damages are cheap: truncation anywhere, a flipped bit anywhere."""
    from charrnn.errors import DataError

    good = (tiny_run / "latest.pt").read_bytes()
    rng = random.Random(1)
    path = tmp_path / "x.pt"
    cases = [good[:n] for n in (1, 10, 100, len(good) // 3, len(good) - 100, len(good) - 1)]
    for _ in range(40):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cases.append(bytes(data))
    refused = 0
    for case in cases:
        path.write_bytes(case)
        try:
            load(path)
        except DataError as exc:
            assert CORRUPT in exc.message
            refused += 1
    # a flip inside a zip record's unused bytes (e.g. padding) can leave the content intact; every change that
    # reaches a tensor or value is caught, and loading never raises anything but DataError
    assert refused >= len(cases) - 8, (refused, len(cases))


def _write_hostile(path: Path, canary: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))  # unpickling calls open(canary, "w"): the canary appears

    torch.save({"format": "charrnn-checkpoint", "version": 1, "model": Payload()}, str(path))


def test_hostile_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The canary test below is meaningful: an unsafe load of the same kind of file does create the canary."""
    import torch

    canary = tmp_path / "canary"
    _write_hostile(tmp_path / "evil.pt", canary)
    torch.load(str(tmp_path / "evil.pt"), weights_only=False)
    assert canary.exists()


@pytest.mark.parametrize("command", ["sample", "eval", "train --resume"])
def test_hostile_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, command):
    canary = tmp_path / "canary"
    evil = tmp_path / "run" / "latest.pt"
    evil.parent.mkdir()
    _write_hostile(evil, canary)
    proc = run_cli(*command.split(), evil, env=env())
    assert_one_line_error(proc, 65, CORRUPT, str(evil))
    assert not canary.exists()


def test_raw_pickle_with_payload_is_refused(tmp_path):
    import pickle

    from charrnn.errors import DataError

    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(DataError, match=CORRUPT):
        load(path)
    assert not canary.exists()


def _claim_cuda(source: Path, dest: Path) -> None:
    """Rewrite a checkpoint so that every tensor says it was saved from cuda:0, as a GPU run's would.

    No GPU here to save one for real; torch records a storage's device as a string in data.pkl
    (BINUNICODE 'cpu', memoised), so the string is swapped and the zip rebuilt."""
    with zipfile.ZipFile(source) as zin:
        pkl = next(n for n in zin.namelist() if n.endswith("data.pkl"))
        data = zin.read(pkl)
        assert data.count(b"X\x03\x00\x00\x00cpu") == 1
        data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                zout.writestr(info, data if info.filename == pkl else zin.read(info))


def test_checkpoint_from_a_gpu_run_loads_on_cpu(tiny_run, tmp_path):
    import torch

    gpu = tmp_path / "gpu.pt"
    _claim_cuda(tiny_run / "latest.pt", gpu)
    if not torch.cuda.is_available():  # the file really claims CUDA: without map_location it cannot load here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(str(gpu), weights_only=True)
    ckpt = load(gpu)
    assert ckpt["model"]["head.weight"].device.type == "cpu"
    proc = run_cli("sample", gpu, "-n", "50", "--seed", "1", env=env(), check=0)
    reference = run_cli("sample", tiny_run / "latest.pt", "-n", "50", "--seed", "1", env=env(), check=0)
    assert proc.stdout == reference.stdout and len(proc.stdout) >= 50


# ----------------------------------------------------------------------------------------------------------------
# corpora


def test_missing_or_unreadable_corpus_exits_66(tmp_path):
    run = ["--run-dir", tmp_path / "run", *TINY]
    assert_one_line_error(run_cli("train", tmp_path / "nope.txt", *run, env=env()), 66, "no such file", "nope.txt")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "notes.md").write_text("not matched by the default --glob *.txt")
    assert_one_line_error(run_cli("train", folder, *run, env=env()), 66, "no files matching '*.txt'", str(folder))
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    assert_one_line_error(run_cli("train", tmp_path / "dangling.txt", *run, env=env()), 66, "dangling.txt")
    # root reads any file whatever its mode; /proc/self/mem fails every read() with EIO
    assert_one_line_error(run_cli("train", "/proc/self/mem", *run, env=env()), 66, "cannot read /proc/self/mem")
    assert not (tmp_path / "run").exists()


def test_empty_short_and_too_small_split_exit_65_naming_what_to_change(tmp_path):
    run = ["--run-dir", tmp_path / "run", *TINY]  # one batch: 4 x 16 + 1 = 65 characters
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("train", empty, *run, env=env()), 65, "empty", "65 characters", "--batch-size")
    short = tmp_path / "short.txt"
    short.write_text("x" * 50)
    assert_one_line_error(run_cli("train", short, *run, env=env()), 65, "needs 65", "--batch-size", "--seq-len")
    small_val = make_corpus(tmp_path / "small_val.txt", n_chars=400)  # 2% validation: 8 characters
    proc = run_cli("train", small_val, *run, "--val-frac", "0.02", env=env())
    assert_one_line_error(proc, 65, "validation split has 8 characters", "needs at least 17", "--val-frac")
    assert not (tmp_path / "run").exists()


def test_invalid_utf8_exits_65_naming_the_byte_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo wörld ".encode() * 20 + b"ok \xc3\x28 then more")
    offset = len("héllo wörld ".encode() * 20) + 3
    proc = run_cli("train", bad, "--run-dir", tmp_path / "run", *TINY, env=env())
    assert_one_line_error(proc, 65, "not valid UTF-8", f"invalid byte 0xc3 at byte offset {offset}")


# ----------------------------------------------------------------------------------------------------------------
# line endings, BOM, CJK, emoji, combining marks


UNICODE_LINES = ["日本語のテキスト。", "thumbs 👍🏽 up", "cafe\u0301 na\u0308ive", "plain ascii line"]


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory) -> Path:
    """A run trained on text with a BOM, CRLF and CR-only line endings, CJK, emoji and combining marks."""
    base = tmp_path_factory.mktemp("unicode")
    rng = random.Random(0)
    body = "".join(rng.choice(UNICODE_LINES) + rng.choice(["\r\n", "\r", "\n"]) for _ in range(120))
    corpus = base / "corpus.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    run_cli("train", corpus, *TINY, "--max-steps", "30", "--run-dir", base / "run", "--quiet", env=env(), check=0)
    return base / "run"


def test_bom_dropped_line_endings_kept_and_each_code_point_one_character(unicode_run):
    vocab = load(unicode_run / "latest.pt")["vocab"]
    assert "\ufeff" not in vocab  # the BOM is dropped
    assert "\r" in vocab and "\n" in vocab  # CRLF and CR-only are kept as they are
    # one character each: a CJK character, the emoji and its skin-tone modifier, a combining mark
    for char in ("日", "語", "。", "👍", "🏽", "\u0301", "\u0308"):
        assert char in vocab
    assert len(vocab) == len(set("".join(UNICODE_LINES) + "\r\n"))


def test_eval_counts_code_points_and_sample_emits_valid_utf8(unicode_run, tmp_path):
    text = "日本語 👍🏽 cafe\u0301\r\nplain\r"
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8", newline="")
    result = json.loads(run_cli("eval", unicode_run, path, "--json", env=env(), check=0).stdout)
    assert result["chars"] == len(text) - 1  # code points, the first one being context only
    assert result["bits_per_char"] > 0
    # hot, long samples reach rare characters (4-byte emoji, combining marks): every byte sequence must decode
    proc = run_cli("sample", unicode_run, "-n", "2000", "-t", "1.5", "--num-samples", "3", "--seed", "5",
                   env=env(), check=0)
    generated = proc.stdout.decode("utf-8")  # strict: raises on broken UTF-8
    assert len(generated) >= 6000 and set(generated) - set("\n") <= set(load(unicode_run / "latest.pt")["vocab"])
    assert any(ord(c) > 0xFFFF for c in generated)  # the 4-byte characters did come out


@pytest.mark.parametrize("variables", [{"LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": ""},
                                       {"PYTHONIOENCODING": "ascii"}])
def test_non_utf8_locale_still_writes_utf8(unicode_run, tmp_path, variables):
    proc = run_cli("sample", unicode_run, "--prime", "日本", "-n", "20", "--seed", "1", env=env(**variables), check=0)
    assert proc.stdout.decode("utf-8").startswith("日本")
    named = tmp_path / "données-日本.txt"
    named.write_text("日本語 plain", encoding="utf-8")
    proc = run_cli("eval", unicode_run, named, env=env(**variables), check=0)
    assert "données-日本.txt" in proc.stdout.decode("utf-8")
    assert b"Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# eval text and prime outside the vocabulary; sampling options


def test_eval_text_outside_vocabulary_is_listed_or_skipped_and_counted(tiny_run, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the quick fox Ω jumps ☃ over ☃ the dog\n", encoding="utf-8")
    proc = run_cli("eval", tiny_run, path, env=env())
    assert_one_line_error(proc, 65, "2 character(s) not in the model's vocabulary", "'Ω'", "'☃'", "--skip-unknown")
    result = json.loads(run_cli("eval", tiny_run, path, "--skip-unknown", "--json", env=env(), check=0).stdout)
    assert result["skipped_unknown"] == 3
    text = run_cli("eval", tiny_run, path, "--skip-unknown", env=env(), check=0).stdout.decode()
    assert "skipped:       3 characters not in the vocabulary" in text


def test_prime_outside_vocabulary_exits_65_naming_them(tiny_run):
    proc = run_cli("sample", tiny_run, "--prime", "the Ωmega ☃", env=env())
    assert_one_line_error(proc, 65, "prime", "'Ω'", "'☃'")


@pytest.mark.parametrize("option, value", [("--temperature", "-0.5"), ("--temperature", "-1"), ("--top-k", "0"),
                                           ("--top-p", "0"), ("--top-p", "1.5"), ("--length", "-1")])
def test_bad_sampling_option_is_a_usage_error(tiny_run, option, value):
    proc = run_cli("sample", tiny_run, option, value, env=env())
    assert_one_line_error(proc, 2, option)


# ----------------------------------------------------------------------------------------------------------------
# a large corpus


def test_a_few_megabyte_corpus_trains(tmp_path):
    # The memory-mapped id cache for truly enormous corpora is issue 4's work; this row only checks that a corpus
    # of a few MB is read, encoded and trained on.
    corpus = make_corpus(tmp_path / "big.txt", n_chars=200_000)
    text = corpus.read_text()
    corpus.write_text(text * 15)  # 3 MB
    proc = run_cli("train", corpus, *TINY, "--max-steps", "2", "--run-dir", tmp_path / "run", "--quiet", env=env())
    assert proc.returncode == 0, proc.stderr
    ckpt = load(tmp_path / "run" / "latest.pt")
    assert ckpt["corpus"]["chars"] == 3_000_000 and ckpt["progress"]["step"] == 2
