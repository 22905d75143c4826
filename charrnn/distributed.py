"""Data-parallel training across processes with torch.distributed (launched by torchrun).

Each rank owns a disjoint, contiguous share of the B parallel streams (B must divide by the world size), so N ranks
with B/N streams each see exactly the data one process with B streams sees. After backward the gradients are
summed across ranks and divided by N, which makes the update equal to the single-process one. Every per-step
decision (non-finite loss, a signal, the time budget) is taken on values all-reduced across ranks, so all ranks
stop together at the same step. Rank 0 alone writes checkpoints, between barriers; the hidden state and RNG
state of every rank are gathered into the checkpoint so that a resume with the same world size is exact.
gloo is used on CPU and NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from .errors import UsageError

TIMEOUT = timedelta(seconds=int(os.environ.get("CHARRNN_DIST_TIMEOUT", "300")))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

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

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, tensor):
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, tensor) -> list:
        if not self.enabled:
            return [tensor]
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return parts

    def agree_on_failure(self, failure):
        """Rank 0's error (or None) on every rank, so that all raise together instead of some ranks waiting in
        a collective for a rank that left. Other ranks get a silent copy with the same exit code (rank 0 alone
        prints the message). Also a barrier."""
        if not self.enabled:
            return failure
        import torch.distributed as dist

        from .errors import CharrnnError

        box = [(failure.message, failure.exit_code) if (self.is_main and failure is not None) else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        if self.is_main:
            return failure
        copy = CharrnnError("")
        copy.exit_code = box[0][1]
        return copy

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
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce_sum(flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def from_environment(device_name: str = "auto"):
    """Join the process group torchrun describes in the environment (if any); returns (Dist, device)."""
    import torch

    from .runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend), device


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
