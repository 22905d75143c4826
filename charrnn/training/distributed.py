"""Data-parallel training across processes with torch.distributed (launched by torchrun).

Each rank owns a disjoint, contiguous share of the B parallel streams (B must divide by the world size), so N ranks
with B/N streams each see exactly the data one process with B streams sees. After backward the gradients are
summed across ranks and divided by N, which makes the update equal to the single-process one. Every per-step
decision (non-finite loss, a signal, the time budget) is taken on values all-reduced across ranks, so all ranks
stop together at the same step. Rank 0 alone writes checkpoints, between barriers; the hidden state and RNG
state of every rank are gathered into the checkpoint so that a resume with the same world size is exact.
gloo is used on CPU and NCCL on CUDA. The initial parameters are broadcast from rank 0, so ranks start equal even
where equal seeds would not give bit-equal weights (an orthogonal init is a QR, which need not be bit-equal across
machines).

NCCL takes only tensors on the rank's GPU, gloo only CPU tensors here: every collective goes through a method of
`Dist`, which checks the device of each tensor it is handed (`Dist.device`) and raises rather than let a backend
fail or hang. Under torchrun a process group is made even at world size 1, so one GPU runs the same collectives
(over NCCL) that many do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from ..errors import UsageError

DEFAULT_TIMEOUT_S = 300
# How long the other ranks wait while each node's local rank 0 reads, hashes and encodes the corpus into the cache
# (a first encode of 1 GB took 93 s on a quiet machine and 688 s on a loaded one): the wait is on a process group of
# its own with this timeout, not on CHARRNN_DIST_TIMEOUT's. A failure there reaches every rank at once.
PREPARE_TIMEOUT = timedelta(hours=24)


def collective_timeout() -> timedelta:
    """How long a collective across torchrun ranks waits for a peer: CHARRNN_DIST_TIMEOUT seconds (default 300).
    Read when a process group is made, so a malformed value is one line (exit 2), not a traceback at import."""
    raw = os.environ.get("CHARRNN_DIST_TIMEOUT")
    if raw is None or not raw.strip():
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds < 10**9):  # nan, inf, 0 and negatives too
        raise UsageError(f"CHARRNN_DIST_TIMEOUT must be a number of seconds > 0 (default {DEFAULT_TIMEOUT_S}), "
                         f"not {raw!r}")
    return timedelta(seconds=seconds)


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """An exception as (one-line message, exit code), the same on every rank: a CharrnnError as it is; an error
    reading or writing a file, or running out of memory, as a line that says so; anything else with its type."""
    from ..errors import EXIT_FAILURE, EXIT_IO, CharrnnError

    if isinstance(exc, CharrnnError):
        return exc.message, exc.exit_code
    if isinstance(exc, MemoryError):
        return ("out of memory while reading and encoding the corpus (local rank 0 of a node): free memory or "
                "lower CHARRNN_CACHE_MIN_BYTES so that the corpus is encoded in chunks"), EXIT_FAILURE
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot read or encode the corpus{where}: {exc.strerror or exc}", EXIT_IO
    text = " ".join(str(exc).split())
    return f"reading the corpus failed: {type(exc).__name__}{': ' + text if text else ''}", EXIT_FAILURE


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: a single process, no process group
    device: Any = None  # where the tensors handed to collectives must be: cuda:LOCAL_RANK for nccl, cpu for gloo

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """The streams (rows of every batch) this rank owns."""
        if batch_size % self.world:
            raise UsageError(
                f"--batch-size {batch_size} does not divide among {self.world} processes: "
                f"use a multiple of {self.world}"
            )
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    # collectives (no-ops in a single process) -----------------------------------------------------------------

    def check_device(self, tensor) -> None:
        """Refuse a tensor the backend cannot take (NCCL: CPU tensors; here gloo: GPU tensors)."""
        want = getattr(self.device, "type", "cpu")
        if tensor.device.type != want:
            raise RuntimeError(f"charrnn bug: a {self.backend} collective was handed a tensor on {tensor.device}; "
                               f"this process group takes {want} tensors")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, tensor):
        if self.enabled:
            import torch.distributed as dist

            self.check_device(tensor)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_values(self, values: list) -> list:
        """Plain numbers summed across ranks (one all-reduce, float64 on the backend's device)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch

        return self.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def all_gather(self, tensor) -> list:
        """Every rank's `tensor`, in rank order, on the device it came from (moved through the backend's
        device when that differs, e.g. a CPU RNG state under NCCL)."""
        if not self.enabled:
            return [tensor]
        import torch
        import torch.distributed as dist

        home = tensor.device
        tensor = tensor.detach().to(self.device).contiguous()
        self.check_device(tensor)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return [p.to(home) for p in parts]

    def broadcast_parameters(self, module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for tensor in list(module.parameters()) + list(module.buffers()):
            self.check_device(tensor)
            dist.broadcast(tensor.data, src=0)

    def agree_on_failure(self, failure):
        """Rank 0's error (or None) on every rank, so that all raise together instead of some ranks waiting in
        a collective for a rank that left. Other ranks get a silent copy with the same exit code (rank 0 alone
        prints the message). Also a barrier."""
        if not self.enabled:
            return failure
        import torch.distributed as dist

        from ..errors import CharrnnError

        box = [(failure.message, failure.exit_code) if (self.is_main and failure is not None) else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        if self.is_main:
            return failure
        copy = CharrnnError("")
        copy.exit_code = box[0][1]
        return copy

    def first_on_each_node(self, fn):
        """fn() on each node's local rank 0 first (e.g. reading, downloading and encoding the corpus into the
        cache), then on the other ranks (which then find the cache). The others wait on a process group of their
        own, as long as the encoding takes (PREPARE_TIMEOUT), not CHARRNN_DIST_TIMEOUT. Any exception in fn() on
        any rank (a CharrnnError, an OSError, a MemoryError, ...) is every rank's failure: all raise the same
        CharrnnError (the first failing rank's message and exit code; rank 0 alone prints it), none is left
        waiting."""
        if not self.enabled:
            return fn()
        from ..errors import CharrnnError

        result = None
        for leaders_turn in (True, False):
            failure, cause = None, None
            if (self.local_rank == 0) == leaders_turn:
                try:
                    result = fn()
                except Exception as exc:  # noqa: BLE001  (every rank must hear of it, whatever it is)
                    failure, cause = describe_failure(exc), exc
            first = next((f for f in self.gather_while_preparing(failure) if f is not None), None)
            if first is not None:
                error = CharrnnError(first[0])
                error.exit_code = first[1]
                raise error from cause
        return result

    def gather_while_preparing(self, value) -> list:
        """Every rank's `value` (a small picklable object), in rank order, over a gloo group whose timeout is
        PREPARE_TIMEOUT (made on first use, by every rank at the same point)."""
        import torch.distributed as dist

        if getattr(self, "_prepare_group", None) is None:
            self._prepare_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
        values = [None] * self.world
        dist.all_gather_object(values, value, group=self._prepare_group)
        return values

    def broadcast_str(self, value: str) -> str:
        """Rank 0's value on every rank (e.g. a default run directory named after the clock)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, parameters) -> None:
        """Sum every gradient across ranks in one flat buffer, then divide by the world size."""
        if not self.enabled:
            return
        import torch

        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # on the parameters' device, which is the rank's
        self.all_reduce_sum(flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def from_environment(device_name: str = "auto"):
    """Join the process group torchrun describes in the environment (if any); returns (Dist, device)."""
    import torch

    from ..model.runtime import resolve_device

    if not launched_by_torchrun():
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    backend = backend_for(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        extra = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=collective_timeout(), **extra)
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend, device=device), device


def backend_for(device_type: str) -> str:
    """NCCL for CUDA, gloo for CPU; anything else is refused with one line."""
    if device_type == "cuda":
        return "nccl"
    if device_type == "cpu":
        return "gloo"
    raise UsageError(f"torchrun with --device {device_type} is not supported (multi-process training runs on CUDA "
                     f"GPUs with NCCL or on CPUs with gloo): use --device cuda or --device cpu")


def shutdown(d: Dist, together: bool = True) -> None:
    """Leave the process group. `together`: every rank is leaving at this same point (a normal end, or an error
    all ranks agreed on), so they meet at a last barrier first (a peer vanishing mid-teardown can abort gloo).
    A rank leaving alone must not: its barrier would pair with some other collective of the ranks still going."""
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if together:
                try:
                    dist.barrier()
                except Exception:
                    pass  # a peer already failed; torchrun reports that
            dist.destroy_process_group()
            # drop what still refers to the process group now, while the interpreter is whole: gloo's worker
            # threads outliving it to interpreter exit abort the process ("terminate called without an active
            # exception", exit -6) after a run that had finished and saved
            import gc

            gc.collect()
