"""Memory: refuse up front what cannot fit (a huge --hidden-size used to take all memory and be OOM-killed), and
running out of memory anyway as one line."""

from __future__ import annotations

import os
from typing import Optional

from ..config import ModelConfig, TrainConfig, resolve_optimizer
from ..errors import CharrnnError, UsageError
from ..store.units import count, size


# a Muon matrix's bytes a parameter at the peak of its step: weight, gradient and momentum (12), and while it steps
# the stacked gradients and momenta, the normalised matrix, its Gram matrix, their product and the next iterate
# (4 each for square matrices; optimizer.MuonAdamW._muon)
MUON_BYTES = 12 + 6 * 4
ADAMW_BYTES = 4 + 4 + 2 * 4  # weight, gradient, two moments


def memory_needed(model_config: ModelConfig, cfg: TrainConfig, streams: int) -> tuple[int, int]:
    """(bytes, parameters) one training step needs, roughly: fp32 weights, gradients and AdamW's two moments
    (16 bytes a parameter, 20 with --ema's averages); under Muon (--optimizer, resolved for the cell) its matrices
    instead keep one momentum and, while it steps, the stacked gradients and momenta and the Newton-Schulz iterates
    (MUON_BYTES a parameter); the activations kept for backward (L x T x B x H x 4 bytes, times 4 per gate set: the
    cell's outputs, pre-activations, dropout and gradients), and the logits with their softmax and gradient. Python
    integers, so no size overflows."""
    V, H, L = max(1, model_config.vocab_size), model_config.hidden_size, model_config.num_layers
    T = cfg.seq_len
    gates = {"gru": 3, "lstm": 4}.get(model_config.cell, 1)
    if model_config.cell == "tanh":
        matrices = (2 * L - 1) * H * H  # W_hh per layer, W_xh for layers 2..L
        core = matrices + L * H  # and the biases
    else:
        matrices = L * gates * 2 * H * H  # torch's GRU/LSTM: input and hidden weights per gate
        core = matrices + L * gates * 2 * H
    parameters = V * H + core + H * V + V  # embedding (layer 1's input weights), core, head
    activations = L * T * streams * H * 4 * 4 * gates + T * streams * H * 4
    logits = T * streams * V * 4 * 3
    each = ADAMW_BYTES + 4 * (cfg.ema > 0)  # and --ema's average
    muon = matrices if resolve_optimizer(cfg.optimizer, model_config.cell) == "muon" else 0
    return parameters * each + muon * (MUON_BYTES - ADAMW_BYTES) + activations + logits, parameters


def memory_available(device) -> Optional[int]:
    """Bytes free for this run: a CUDA device's free memory, or on CPU MemAvailable (within a cgroup's limit);
    None where unknown (MPS)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f, open(usage_path) as g:
                limit, usage = f.read().strip(), int(g.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            available = min(available, max(0, int(limit) - usage))
    return available


def check_memory(model_config: ModelConfig, cfg: TrainConfig, device, world: int = 1) -> None:
    """UsageError (exit 2) when the model, its optimizer state and one batch need more memory than is available.
    Under torchrun each process holds its own copy: on CPU the node's processes share its memory."""
    available = memory_available(device)
    if available is None:
        return
    streams = max(1, cfg.batch_size // max(1, world))
    needed, parameters = memory_needed(model_config, cfg, streams)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" and world > 1 else 1
    if needed * sharing <= available:
        return
    where = "this machine has" if device.type == "cpu" else f"{device} has"
    each = f" ({sharing} processes, each)" if sharing > 1 else ""
    raise UsageError(
        f"--hidden-size {model_config.hidden_size} with --num-layers {model_config.num_layers}, --batch-size "
        f"{cfg.batch_size} and --seq-len {cfg.seq_len} needs about {size(needed)}{each} to train "
        f"({count(parameters)} parameters); {where} {size(available)} available (--no-memory-check to try anyway)"
    )


def _out_of_memory_as_error(fn):
    """fn(), with running out of memory (a size past --no-memory-check, or memory taken meanwhile) as one line."""
    try:
        return fn()
    except (MemoryError, RuntimeError) as exc:
        import torch

        oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
        oom = isinstance(exc, oom_types) or "can't allocate memory" in str(exc)
        if not oom:
            raise
        first = (str(exc).strip().splitlines() or ["MemoryError"])[0][:200]
        raise CharrnnError(f"out of memory: {first} (lower --hidden-size, --num-layers or --batch-size)") from exc

