"""CPU runs training at once share the machine's threads (charrnn/training/sharing.py): each counts the runs holding
their files locked in a directory of the temp dir and uses its share of the threads it started with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from charrnn.training import sharing
from charrnn.training.sharing import CHECK_EVERY, CpuShare

from conftest import ROOT, cli_env, make_corpus, run_cli


def joined(directory, threads=4):
    calls = []
    share = CpuShare(threads, calls.append, directory=str(directory))
    assert share.join()
    return share, calls


def test_runs_training_at_once_split_the_threads_and_take_them_back_when_alone(tmp_path):
    a, calls = joined(tmp_path)
    a.check(0.0)
    assert calls == []  # alone: all 4 threads, as it started
    b, b_calls = joined(tmp_path)
    a.check(CHECK_EVERY / 2)
    assert calls == []  # counted at most every CHECK_EVERY seconds
    a.check(CHECK_EVERY)
    b.check(0.0)
    assert calls == [2] and b_calls == [2]
    c, _ = joined(tmp_path)
    a.check(2 * CHECK_EVERY)
    assert calls == [2, 1]  # 4 // 3
    c.leave()
    b.leave()
    assert b_calls == [2, 4]  # a run that ends puts its threads back
    a.check(3 * CHECK_EVERY)
    assert calls == [2, 1, 4] and a.most_others == 2
    a.leave()
    assert calls == [2, 1, 4] and os.listdir(tmp_path) == []


def test_files_of_ended_runs_are_removed_and_one_thread_is_the_least(tmp_path):
    (tmp_path / "999999-gone.trainer").write_text("")  # a run that ended: nobody holds its lock
    (tmp_path / ".joining-abc").write_text("")  # not a run's file yet: neither counted nor removed
    a, calls = joined(tmp_path, threads=1)
    b, _ = joined(tmp_path, threads=1)
    assert a.others() == 1
    assert sorted(os.listdir(tmp_path)) == sorted([".joining-abc", os.path.basename(a.path), os.path.basename(b.path)])
    a.check(0.0)
    assert calls == []  # one thread shared by two is still one thread
    a.leave()
    b.leave()


def test_a_run_killed_or_stopped_is_not_counted(tmp_path):
    """The lock goes with the process however it ends; a stopped process (Ctrl-Z) is not counted while stopped."""
    code = ("import sys; from charrnn.training.sharing import CpuShare; "
            f"s = CpuShare(2, print, directory={str(tmp_path)!r}); assert s.join(); print('joined', flush=True); "
            "sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline() == b"joined\n"
        a, _ = joined(tmp_path)
        assert a.others() == 1
        if os.path.exists(f"/proc/{other.pid}/stat"):
            os.kill(other.pid, signal.SIGSTOP)
            while open(f"/proc/{other.pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "Tt":
                pass  # the signal is delivered asynchronously
            assert a.others() == 0
            os.kill(other.pid, signal.SIGCONT)
            assert a.others() == 1
        os.kill(other.pid, signal.SIGKILL)
        other.wait(timeout=30)
        assert a.others() == 0 and os.listdir(tmp_path) == [os.path.basename(a.path)]
        a.leave()
    finally:
        other.kill()
        other.wait(timeout=30)


def test_where_no_file_can_be_kept_a_run_trains_with_all_its_threads(tmp_path):
    (tmp_path / "file").write_text("")
    calls = []
    share = CpuShare(4, calls.append, directory=str(tmp_path / "file" / "trainers"))
    assert not share.join()
    share.check(0.0)
    share.leave()
    assert calls == [] and share.most_others == 0


def test_the_trainers_directory_is_per_user_under_the_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(sharing.tempfile, "gettempdir", lambda: str(tmp_path))
    assert sharing.trainers_dir().startswith(str(tmp_path / "charrnn-"))


def test_a_cpu_run_says_it_shares_the_machine_and_leaves_no_file(tmp_path):
    """A real `charrnn train` while another run (this test) holds its file: it uses half its threads, says so on
    stderr, and removes its file when it ends."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    directory = tmp_path / "tmp" / f"charrnn-{user}" / "trainers"
    other, _ = joined(directory)
    corpus = make_corpus(tmp_path / "c.txt", 3000)
    try:
        proc = run_cli("train", corpus, "--hidden-size", "16", "--num-layers", "1", "--max-steps", "3",
                       "--batch-size", "4", "--seq-len", "16", "--run-dir", tmp_path / "run", "--sample-every", "0",
                       env=cli_env(TMPDIR=tmp_path / "tmp", OMP_NUM_THREADS="2"), check=0)
        err = proc.stderr.decode()
        assert "1 other charrnn run training on this machine: this one uses 1 of its 2 threads" in err, err
        assert os.listdir(directory) == [os.path.basename(other.path)]
    finally:
        other.leave()


def test_only_a_single_process_cpu_run_shares():
    import torch

    from charrnn.training.sharing import CpuShare, Unshared, for_device

    assert isinstance(for_device(torch.device("cpu")), CpuShare)
    assert isinstance(for_device(torch.device("cpu"), world=2), Unshared)  # a torchrun job's ranks: not each other's
    assert isinstance(for_device(torch.device("meta")), Unshared)
