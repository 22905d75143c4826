"""The continuous-batching scheduler: one thread owns the model and steps every active row together.

A request is one or more jobs (one per prompt and choice); each job is a row of the batch with its own hidden
state and its own seeded generator. Each step feeds every row one character (the next prompt character while a
row reads its prompt, otherwise the one it drew last), and every row past its prompt draws its next character.
Jobs join and leave between steps, so a new request starts at the next step and a cancelled one (its client gone)
is dropped at the next step. Beyond the row capacity, requests wait in a bounded queue; beyond that, `QueueFull`.

Handing characters to the event loop: the thread appends to the job's lists and wakes the request's asyncio.Event
(call_soon_threadsafe) with the first character, the last, and otherwise at most every FLUSH_INTERVAL, never while
a wake-up is still pending: each server-sent event then carries the characters of many steps, so the event loop
costs little per character however fast the model steps, and a stream still updates 50 times a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Optional

import numpy as np

from ..inference.sampling import pick
from .rows import log_softmax, logprob_entry, make_rows

UNIFORM_BLOCK = 1024  # uniforms drawn from a job's generator this many at a time (as sample.generate does)
SHUTDOWN_GRACE = 2.0  # seconds the streams in flight get to finish once the server is told to stop
FLUSH_INTERVAL = 0.02  # a stream's handler is woken with its first character, its last, and at most this often


class QueueFull(Exception):
    pass


class Job:
    """One row: a prompt, its options, its generator, and what it has produced."""

    def __init__(self, prompt_ids: list[int], max_tokens: int, temperature: float, top_k: Optional[int],
                 top_p: Optional[float], stop: list[str], logprobs: Optional[int], seed: Optional[int]):
        import torch

        self.prompt_ids, self.max_tokens = prompt_ids, max_tokens
        self.options = (temperature, top_k, top_p)
        self.stop, self.logprobs = stop, logprobs
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.uniforms, self.used = None, UNIFORM_BLOCK
        self.pos = 0  # prompt characters fed so far
        self.last = -1  # the id drawn last
        self.chars: list[str] = []  # generated characters (a stop sequence included, never shown)
        self.entries: list = []  # per generated character with logprobs: (logprob, {char: logprob} of the top N)
        self.visible = 0  # how many of chars may be shown (the rest might begin a stop sequence)
        self.finish_reason: Optional[str] = None

    def uniform(self) -> float:
        if self.used == UNIFORM_BLOCK:
            import torch

            self.uniforms = (1.0 - torch.rand(UNIFORM_BLOCK, 1, generator=self.generator,
                                              dtype=torch.float64)).numpy()[:, 0]
            self.used = 0
        self.used += 1
        return self.uniforms[self.used - 1]

    def add(self, char: str) -> bool:
        """Record a drawn character; True when the job is done."""
        chars = self.chars
        chars.append(char)
        if self.stop:
            n = len(chars)
            for s in self.stop:
                if n >= len(s) and chars[-1] == s[-1] and "".join(chars[n - len(s):]) == s:
                    self.visible = n - len(s)
                    self.finish_reason = "stop"
                    return True
            hold = 0  # the longest end of the text that begins a stop sequence
            for s in self.stop:
                for k in range(min(len(s) - 1, n), hold, -1):
                    if "".join(chars[n - k:]) == s[:k]:
                        hold = k
                        break
            self.visible = n - hold
        else:
            self.visible = len(chars)
        if len(chars) >= self.max_tokens:
            self.visible = len(chars)
            self.finish_reason = "length"
            return True
        return False

    def end(self, reason: str) -> None:
        self.visible = len(self.chars) if reason == "length" else self.visible
        self.finish_reason = reason


class Request:
    """What a client asked for: its jobs, the event that wakes its handler, and its timings."""

    def __init__(self, jobs: list[Job], loop, event):
        self.jobs, self.loop, self.event = jobs, loop, event
        self.cancelled = False
        self.wake_pending = False
        self.last_wake = 0.0
        self.submitted = time.monotonic()
        self.first_char: Optional[float] = None
        self.finished: Optional[float] = None
        self.admitted = False
        self.touched = -1  # the scheduler's draw that last gave this request a character

    @property
    def done(self) -> bool:
        return self.finished is not None

    def _wake(self) -> None:
        self.wake_pending = False
        self.event.set()

    def notify(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


class Scheduler:
    def __init__(self, model, vocab, info: dict, max_streams: int, max_queue: int, device, metrics=None):
        self.vocab, self.info = vocab, info
        self.max_streams, self.max_queue = max_streams, max_queue
        self.device = device
        self.metrics = metrics
        self.rows = make_rows(model, max_streams, device)
        self.ids = np.zeros(max_streams, np.int64)  # each step's inputs
        self.draws = 0  # steps that drew characters so far
        self.unreported = 0  # characters generated and not yet added to the metrics' counter
        self.config = model.config
        self._warm()
        self.chars = vocab.chars
        self.cond = threading.Condition()
        self.queue: deque[Request] = deque()
        self.active: list[tuple[Job, Request]] = []  # row i is active[i]
        self.requests: set[Request] = set()
        self.pending_model = None  # (model, vocab, info) from the watcher, taken between steps
        self.stopping: Optional[float] = None  # when the stop was asked for
        self._shown = (-1, -1)  # the gauges' values last set
        self.thread = threading.Thread(target=self._run, name="charrnn-serve-scheduler", daemon=True)

    def _warm(self) -> None:
        """Step once with one row and once with several, so that compiling (numba) or loading kernels happens
        before the server says it is ready, not in the first request's time to first character."""
        import torch

        with torch.inference_mode():
            for B in sorted({1, min(self.max_streams, 8)}):
                self.rows.step(np.zeros(B, np.int64))
        for row in range(min(self.max_streams, 8)):
            self.rows.reset(row)

    # ------------------------------------------------------------------ called from the event loop / other threads
    def start(self) -> None:
        self.thread.start()

    def submit(self, request: Request) -> None:
        with self.cond:
            if self.stopping is not None:
                raise QueueFull("the server is shutting down")
            claimed, waiting = len(self.active), 0  # rows taken, and queued requests that will have to wait
            for queued in self.queue:
                claimed += len(queued.jobs)
                waiting += claimed > self.max_streams
            if claimed + len(request.jobs) > self.max_streams and waiting >= self.max_queue:
                raise QueueFull(f"all {self.max_streams} streams are busy and {waiting} requests are waiting")
            self.queue.append(request)
            self._gauges()
            self.cond.notify()

    def cancel(self, request: Request) -> None:
        with self.cond:
            request.cancelled = True
            self.cond.notify()

    def replace_model(self, model, vocab, info: dict) -> None:
        with self.cond:
            self.pending_model = (model, vocab, info)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            if self.stopping is None:
                self.stopping = time.monotonic()
            self.cond.notify()

    def join(self, timeout: Optional[float] = None) -> None:
        self.thread.join(timeout)

    # ------------------------------------------------------------------ the scheduler thread
    def _gauges(self) -> None:
        now = (len(self.active), len(self.queue))
        if self.metrics is not None and now != self._shown:  # set on change only: this runs at every step
            self._shown = now
            self.metrics.active_streams.set(now[0])
            self.metrics.queue_depth.set(now[1])

    def _finish(self, request: Request, reason: Optional[str] = None) -> None:
        if reason is not None:
            for job in request.jobs:
                if job.finish_reason is None:
                    job.end(reason)
        request.finished = time.monotonic()
        self.requests.discard(request)
        if self.metrics is not None:
            self.metrics.request_duration.observe(request.finished - request.submitted)
            if self.unreported:
                self.metrics.characters.inc(self.unreported)
                self.unreported = 0
        request.notify()

    def _admit(self) -> None:
        """Move queued requests into free rows, first come first served (under self.cond)."""
        while self.queue:
            request = self.queue[0]
            if request.cancelled:
                self.queue.popleft()
                self._finish(request)
                continue
            if self.pending_model is not None and self.active:
                return  # a model of another shape waits for the rows to drain; see _take_model
            if len(self.active) + len(request.jobs) > self.max_streams:
                return
            self.queue.popleft()
            request.admitted = True
            self.requests.add(request)
            live = False
            for job in request.jobs:
                if job.max_tokens == 0:
                    job.end("length")
                    continue
                self.rows.reset(len(self.active))
                self.active.append((job, request))
                live = True
            if not live:
                self._finish(request)

    def _drop(self) -> None:
        """Remove the rows whose job is done or whose client left; the last row moves into each gap."""
        i = 0
        while i < len(self.active):
            job, request = self.active[i]
            if job.finish_reason is None and not request.cancelled:
                i += 1
                continue
            last = len(self.active) - 1
            if i != last:
                self.rows.move(last, i)
                self.active[i] = self.active[last]
            self.active.pop()
            if request.cancelled and not request.done:
                self._finish(request)

    def _take_model(self) -> None:
        model, vocab, info = self.pending_model
        if vocab.chars == self.vocab.chars and model.config == self.config:
            self.rows.load(model)  # the streams in flight keep their states and go on with the new weights
        elif self.active:
            return  # another shape: new requests wait until the rows in flight are done
        else:
            self.rows = make_rows(model, self.max_streams, self.device)
            self.config = model.config
            self.vocab, self.chars = vocab, vocab.chars
        self.info = info  # one assignment: a route reading it sees the old info or the new, never half of it
        self.pending_model = None
        if self.metrics is not None:
            self.metrics.reloads.inc()
            self.metrics.model_step.set(info.get("step") or 0)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.cond:
                    if self.pending_model is not None:
                        self._take_model()
                    if self.stopping is not None:
                        for request in list(self.queue):
                            self._finish(request, "abort")
                        self.queue.clear()
                        if time.monotonic() - self.stopping > SHUTDOWN_GRACE:
                            for _, request in self.active:
                                if not request.done:
                                    self._finish(request, "abort")
                            self.active.clear()
                    self._drop()
                    self._admit()
                    self._gauges()
                    if not self.active:
                        if self.stopping is not None:
                            return
                        self.cond.wait(timeout=1.0)
                        continue
                try:
                    self._step()
                except Exception as exc:  # a bug must not leave every client waiting forever: end what runs
                    import logging

                    logging.getLogger("charrnn").error(f"serve: a step failed ({exc.__class__.__name__}: {exc}); "
                                                       f"the streams in flight end with finish_reason 'error'")
                    with self.cond:
                        for _, request in self.active:
                            if not request.done:
                                self._finish(request, "error")
                        self.active.clear()

    def _step(self) -> None:
        active = self.active
        B = len(active)
        ids = self.ids[:B]
        drawing = []  # rows that draw a character after this step
        for i, (job, _) in enumerate(active):
            if job.pos < len(job.prompt_ids):
                ids[i] = job.prompt_ids[job.pos]
                job.pos += 1
                if job.pos == len(job.prompt_ids):
                    drawing.append(i)
            else:
                ids[i] = job.last
                drawing.append(i)
        logits = self.rows.step(ids)
        if drawing:
            self._draw(logits, drawing)

    def _draw(self, logits: np.ndarray, drawing: list[int]) -> None:
        """Draw the next character of every row in `drawing`, record it, and wake the handlers due a wake-up."""
        active = self.active
        picked = draw_ids(active, logits, drawing)
        wanting = [i for i in drawing if active[i][0].logprobs is not None]
        lps = dict(zip(wanting, log_softmax(logits[wanting]))) if wanting else None
        now = time.monotonic()
        self.draws = draw = self.draws + 1
        touched, ended = [], []  # the requests given a character now (once each); those with a job that ended
        chars = self.chars
        for i, c in zip(drawing, picked):
            job, request = active[i]
            job.last = c
            if lps is not None and job.logprobs is not None:
                job.entries.append(logprob_entry(lps[i], c, job.logprobs, chars))
            if job.add(chars[c]):
                ended.append(request)
            if request.first_char is None:
                request.first_char = now
                request.last_wake = 0.0  # the first character goes out at once
                if self.metrics is not None:
                    self.metrics.ttfc.observe(now - request.submitted)
            if request.touched != draw:
                request.touched = draw
                touched.append(request)
        self.unreported += len(drawing)
        finished = [r for r in dict.fromkeys(ended) if not r.done and all(j.finish_reason is not None for j in r.jobs)]
        due = [r for r in touched if not r.done and r not in finished and now - r.last_wake >= FLUSH_INTERVAL]
        if (finished or due) and self.metrics is not None:  # counted before a handler wakes, not at every step
            self.metrics.characters.inc(self.unreported)
            self.unreported = 0
        with self.cond:
            for request in finished:
                self._finish(request)
            for request in due:
                request.last_wake = now
                request.notify()


def draw_ids(active: list, logits: np.ndarray, drawing: list[int]) -> list[int]:
    """The ids drawn for the rows in `drawing` of `active` ((job, request) per row), in its order: one pick per set
    of sampling options."""
    options = active[drawing[0]][0].options
    if len(drawing) == 1:  # one row: its uniform as a view of its block, no new array
        job = active[drawing[0]][0]
        job.uniform()
        return pick(logits[drawing[0] : drawing[0] + 1], job.uniforms[job.used - 1 : job.used], *options).tolist()
    if all(active[i][0].options == options for i in drawing):  # the usual case: one call for all rows
        u = np.array([active[i][0].uniform() for i in drawing])
        return pick(logits if len(drawing) == len(active) else logits[drawing], u, *options).tolist()
    groups: dict = {}
    for n, i in enumerate(drawing):
        groups.setdefault(active[i][0].options, []).append(n)
    picked = [0] * len(drawing)
    for options, members in groups.items():
        rows = [drawing[n] for n in members]
        u = np.array([active[i][0].uniform() for i in rows])
        for n, c in zip(members, pick(logits[rows], u, *options).tolist()):
            picked[n] = c
    return picked
