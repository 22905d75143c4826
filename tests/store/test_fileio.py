"""The one atomic writer (charrnn.store.fileio) and its one OSError -> user-error mapping."""

from __future__ import annotations

import errno
import os

import pytest

from charrnn.store import fileio
from charrnn.errors import EXIT_CANT_CREATE, EXIT_IO, CannotCreateError, WriteError

import faults


def test_the_temp_file_is_unique_and_in_the_target_directory(tmp_path, monkeypatch):
    seen = []

    def spy(f, path):
        seen.append((os.listdir(tmp_path), path))
        return f

    monkeypatch.setattr(fileio, "write_hook", spy)
    target = tmp_path / "out.txt"
    for text in ("one", "two"):
        fileio.write_text(str(target), text)
    (first, path), (second, _) = seen
    assert path == str(target)
    assert len(first) == 1 and first[0].startswith(fileio.TEMP_PREFIX + "out.txt.")  # beside the target
    assert len(second) == 2 and "out.txt" in second  # the old file stays until the new one replaces it
    temp_names = {first[0], next(n for n in second if n != "out.txt")}
    assert len(temp_names) == 2  # a new name each time
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["out.txt"]


def test_concurrent_writers_get_different_temp_files(tmp_path):
    target = str(tmp_path / "out.bin")
    with fileio.atomic_write(target) as a, fileio.atomic_write(target) as b:
        temp_a, temp_b = (os.readlink(f"/proc/self/fd/{f.fileno()}") for f in (a, b))
        assert temp_a != temp_b and os.path.dirname(temp_a) == os.path.dirname(temp_b) == str(tmp_path)
        a.write(b"a")
        b.write(b"b")
    assert open(target, "rb").read() == b"a"  # the last to finish wins, whole


def test_a_failure_in_the_block_removes_the_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(str(target)) as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "old"


def test_disk_full_is_one_line_exit_74_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    target.write_bytes(b"old")
    monkeypatch.setattr(fileio, "write_hook", faults.disk_full_after(100))
    with pytest.raises(WriteError) as info:
        fileio.write_bytes([str(target), str(tmp_path / "best.pt")], b"x" * 1000, what="checkpoint")
    assert info.value.exit_code == EXIT_IO == 74
    assert info.value.message == f"cannot write checkpoint {target}: disk full"
    assert "\n" not in info.value.message
    assert os.listdir(tmp_path) == ["latest.pt"] and target.read_bytes() == b"old"


@pytest.mark.parametrize("code, cls, exit_code, reason", [
    (errno.ENOSPC, WriteError, 74, "disk full"),
    (errno.EDQUOT, WriteError, 74, "disk quota exceeded"),
    (errno.EIO, WriteError, 74, os.strerror(errno.EIO)),
    (errno.EACCES, CannotCreateError, 73, os.strerror(errno.EACCES)),
    (errno.EROFS, CannotCreateError, 73, os.strerror(errno.EROFS)),
    (errno.ENOENT, CannotCreateError, 73, os.strerror(errno.ENOENT)),
    (errno.EISDIR, CannotCreateError, 73, os.strerror(errno.EISDIR)),
])
def test_write_error_mapping(code, cls, exit_code, reason):
    error = fileio.write_error(OSError(code, os.strerror(code)), "/x/y.toml", "config file")
    assert type(error) is cls and error.exit_code == exit_code
    assert error.message == f"cannot write config file /x/y.toml: {reason}"
    assert fileio.write_error(OSError(code, os.strerror(code)), "/x/y", hint=" (hint)").message.endswith(" (hint)")


def test_an_unwritable_place_is_73(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CannotCreateError) as info:  # a directory below a regular file (root ignores modes)
        fileio.write_text(str(blocker / "out.txt"), "x", what="HTML view")
    assert info.value.exit_code == EXIT_CANT_CREATE
    assert str(blocker / "out.txt") in info.value.message
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(CannotCreateError):  # a directory where the file should go
        fileio.write_text(str(target), "x")
    assert sorted(os.listdir(tmp_path)) == ["adir", "file"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK])
def test_without_hard_links_the_extra_names_are_copies(tmp_path, monkeypatch, code):
    def no_links(src, dst, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    names = [str(tmp_path / n) for n in ("latest.pt", "best.pt", "step-00000001.pt")]
    fileio.write_bytes(names, b"checkpoint bytes")
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(n) for n in names)  # no temp left
    for name in names:
        assert open(name, "rb").read() == b"checkpoint bytes"
    inodes = {os.stat(n).st_ino for n in names}
    assert len(inodes) == 3  # separate copies


def test_with_hard_links_the_extra_names_share_the_file(tmp_path):
    names = [str(tmp_path / n) for n in ("latest.pt", "best.pt")]
    fileio.write_bytes(names, b"data")
    assert os.stat(names[0]).st_ino == os.stat(names[1]).st_ino
    assert open(names[1], "rb").read() == b"data"


def test_file_and_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fileio.write_text(str(tmp_path / "out.txt"), "x")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(fileio.TEMP_PREFIX)  # the temp file's data first
    assert events[2][1] == str(tmp_path.resolve())  # then the directory, after the rename


def test_a_directory_fsync_the_filesystem_does_not_support_is_skipped(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fileio.write_text(str(tmp_path / "out.txt"), "x")
    assert (tmp_path / "out.txt").read_text() == "x"


def test_new_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.write_text(str(tmp_path / "out.txt"), "x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "out.txt").st_mode & 0o777 == 0o644


def test_the_hook_does_nothing_by_default():
    assert fileio.write_hook is None


def test_every_writer_goes_through_fileio():
    """No other module of the package renames files into place or fsyncs on its own."""
    package = os.path.dirname(os.path.dirname(fileio.__file__))  # charrnn/, every folder in it
    offenders = []
    for name in sorted(os.path.relpath(os.path.join(top, f), package).replace(os.sep, "/")
                       for top, _, files in os.walk(package) for f in files):
        if not name.endswith(".py") or name == "store/fileio.py":
            continue
        with open(os.path.join(package, name), encoding="utf-8") as f:
            text = f.read()
        offenders += [f"{name}: {word}" for word in ("os.replace(", "os.fsync(", "os.link(", "mkstemp(")
                      if word in text]
    assert offenders == []


# -- a killed writer's temp files are swept; a live writer's never ------------------------------------------------


def _temps(directory) -> list:
    return sorted(n for n in os.listdir(directory) if n.startswith(fileio.TEMP_PREFIX))


def test_a_failed_directory_fsync_after_the_rename_is_a_warning_not_a_failed_write(tmp_path, monkeypatch, caplog):
    import logging

    def broken(directory):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fileio, "fsync_dir", broken)
    monkeypatch.setattr(logging.getLogger("charrnn"), "propagate", True)  # the CLI's setup, if run, turns it off
    with caplog.at_level(logging.WARNING, logger="charrnn"):
        fileio.write_bytes([str(tmp_path / "latest.pt"), str(tmp_path / "best.pt")], b"new", "checkpoint")
    assert (tmp_path / "latest.pt").read_bytes() == b"new" and (tmp_path / "best.pt").read_bytes() == b"new"
    assert _temps(tmp_path) == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "could not fsync its directory" in warned[0] and "latest.pt" in warned[0], warned


def test_a_temp_being_written_is_held_and_never_swept_a_dead_writers_is(tmp_path):
    import fcntl
    import subprocess
    import sys

    from conftest import cli_env, hang_guard

    # a writer in another process, alive and mid-write: its temp survives every sweep
    code = ("import sys; from charrnn.store import fileio\n"
            "with fileio.atomic_write(sys.argv[1]) as f:\n"
            "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); sys.stdin.readline()\n"
            "print('done', flush=True)")
    live = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "live.bin")], env=cli_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "dead.bin")], env=cli_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == b"writing\n" and dead.stdout.readline() == b"writing\n"
        assert len(_temps(tmp_path)) == 2
        dead.kill()  # as SIGKILL or the OOM killer would, mid-write: its partial temp file stays
        dead.wait(timeout=hang_guard(30))
        unlocked = tmp_path / (fileio.TEMP_PREFIX + "old.bin.0000")  # a temp nobody holds (an older charrnn's)
        unlocked.write_bytes(b"y" * 500)
        [dead_temp] = [n for n in _temps(tmp_path) if n.startswith(fileio.TEMP_PREFIX + "dead.bin.")]
        removed = fileio.sweep_stale_temps(str(tmp_path))
        assert sorted((os.path.basename(p), n) for p, n in removed) == [(dead_temp, 1000), (unlocked.name, 500)]
        left = _temps(tmp_path)
        assert len(left) == 1 and left[0].startswith(fileio.TEMP_PREFIX + "live.bin.")  # the live writer's, untouched
        assert fileio.sweep_stale_temps(str(tmp_path)) == []
        # a temp whose flock another open file holds (as its writer does) is kept too
        mine = tmp_path / (fileio.TEMP_PREFIX + "mine.bin.0000")
        with open(mine, "wb") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            assert fileio.sweep_stale_temps(str(tmp_path)) == [] and mine.exists()
        assert fileio.sweep_stale_temps(str(tmp_path)) == [(str(mine), 0)]  # let go of: swept
        live.stdin.write(b"go\n")
        live.stdin.flush()
        assert live.stdout.readline() == b"done\n"
        assert live.wait(timeout=hang_guard(30)) == 0
    finally:
        for proc in (live, dead):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert (tmp_path / "live.bin").read_bytes() == b"x" * 1000 and not (tmp_path / "dead.bin").exists()
    assert _temps(tmp_path) == []


def test_a_writer_whose_new_temp_was_swept_before_it_locked_it_makes_another(tmp_path, monkeypatch):
    import fcntl

    real_flock, swept = fcntl.flock, []

    def flock(fd, op):
        if not swept and op == fcntl.LOCK_EX:  # a sweeper got there first: it took the lock and removed the file
            swept.extend(_temps(tmp_path))
            os.unlink(tmp_path / swept[0])
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    fileio.write_bytes(str(tmp_path / "out.bin"), b"data")
    assert len(swept) == 1 and (tmp_path / "out.bin").read_bytes() == b"data" and _temps(tmp_path) == []
