"""serve's scheduler without HTTP: stop sequences held back, the queue's bound, and a failing step that ends the
streams instead of leaving their clients waiting."""

from __future__ import annotations

import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("starlette")


class _Loop:
    """Stands in for the event loop: runs the wake-up at once."""

    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


def _scheduler(max_streams=4, max_queue=4):
    from charrnn.config import ModelConfig
    from charrnn.data.vocab import Vocab
    from charrnn.model.network import CharRNN
    from charrnn.serve.scheduler import Scheduler

    vocab = Vocab(list("\nabc "))
    model = CharRNN(ModelConfig(hidden_size=16, num_layers=1, vocab_size=len(vocab.chars))).eval()
    return Scheduler(model, vocab, {"name": "t", "step": 1}, max_streams, max_queue, torch.device("cpu"))


def _request(n_chars=20, seed=1, stop=()):
    from charrnn.serve.scheduler import Job, Request

    return Request([Job([1, 2], n_chars, 1.0, None, None, list(stop), None, seed)], _Loop(), threading.Event())


def _wait(request, timeout=60):
    deadline = time.monotonic() + timeout
    while not request.done:
        assert time.monotonic() < deadline, "the request never finished"
        request.event.wait(0.1)


def test_stop_sequences_are_held_back_and_cut():
    from charrnn.serve.scheduler import Job

    job = Job([0], 100, 1.0, None, None, ["ab", "cc"], None, 0)
    seen = []
    for c in "xacab":
        done = job.add(c)
        seen.append(job.visible)
    assert seen == [1, 1, 2, 3, 3] and done and job.finish_reason == "stop"
    assert "".join(job.chars[: job.visible]) == "xac"
    job = Job([0], 3, 1.0, None, None, ["ab"], None, 0)
    assert [job.add(c) for c in "xxa"] == [False, False, True]
    assert job.visible == 3 and job.finish_reason == "length"  # a partial stop at the end is text after all


def test_the_queue_is_bounded():
    from charrnn.serve.scheduler import QueueFull

    s = _scheduler(max_streams=1, max_queue=1)  # not started: nothing leaves the queue
    s.submit(_request())  # takes the row
    s.submit(_request())  # waits
    with pytest.raises(QueueFull):
        s.submit(_request())


def test_requests_run_and_a_failing_step_ends_the_streams():
    s = _scheduler()
    s.start()
    try:
        ok = _request(n_chars=30)
        s.submit(ok)
        _wait(ok)
        assert ok.jobs[0].finish_reason == "length" and len(ok.jobs[0].chars) == 30

        def broken(ids):
            raise RuntimeError("injected")

        s.rows.step = broken
        failing = _request(n_chars=30)
        s.submit(failing)
        _wait(failing)
        assert failing.jobs[0].finish_reason == "error"
    finally:
        s.stop()
        s.join(30)
    assert not s.thread.is_alive()
