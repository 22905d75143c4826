"""What CPU can prove about the collectives (charrnn.training.distributed), in-process and in seconds:

- a Dist refuses a tensor its backend cannot take (NCCL: CPU tensors; gloo: anything but CPU) before any
  torch.distributed call, so a wrong device fails loudly instead of crashing or hanging inside the backend;
- a whole `charrnn.train` run at world size 2 against a recording fake of torch.distributed (an identical peer):
  every collective goes through Dist's checked methods with tensors on `dist.device`, the initial parameters are
  broadcast, the per-step all-reduces happen every step and the evaluation sums go through a collective too;
- two real gloo processes seeded differently start from rank 0's weights after `broadcast_parameters`;
- backend_for refuses MPS with one line; under torchrun at world size 1 on CPU a gloo group is made.

The real proof on CUDA (NCCL) is tests/gpu.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
import torch
import torch.distributed as tdist

import charrnn
import charrnn.training.distributed as cdist
from charrnn.config import ModelConfig
from charrnn.training.distributed import Dist, backend_for
from charrnn.errors import UsageError
from charrnn.model.network import CharRNN

from conftest import hang_guard, make_corpus

COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "broadcast_object_list", "barrier")


def forbid_collectives(monkeypatch):
    """Any call into torch.distributed's collectives fails the test."""
    for name in COLLECTIVES:
        def called(*args, _name=name, **kwargs):
            pytest.fail(f"torch.distributed.{_name} was called with a tensor the backend cannot take")
        monkeypatch.setattr(tdist, name, called)


def tiny_model():
    return CharRNN(ModelConfig(vocab_size=20, hidden_size=16, num_layers=2))


# --- a tensor on the wrong device is refused before the backend sees it -------------------------------------------

def test_nccl_dist_refuses_cpu_tensors_before_any_collective(monkeypatch):
    forbid_collectives(monkeypatch)
    d = Dist(rank=0, world=2, backend="nccl", device=torch.device("cuda", 0))
    assert d.enabled
    with pytest.raises(RuntimeError, match="nccl collective was handed a tensor on cpu.*takes cuda tensors"):
        d.check_device(torch.zeros(3))
    with pytest.raises(RuntimeError, match="nccl collective was handed a tensor on cpu"):
        d.all_reduce_sum(torch.zeros(3, dtype=torch.float64))
    model = tiny_model()  # on the CPU: neither its weights nor its gradients may reach NCCL
    with pytest.raises(RuntimeError, match="nccl collective was handed a tensor on cpu"):
        d.broadcast_parameters(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="nccl collective was handed a tensor on cpu"):
        d.average_gradients(model.parameters())


def test_gloo_dist_refuses_a_meta_tensor(monkeypatch):
    forbid_collectives(monkeypatch)
    d = Dist(rank=0, world=2, backend="gloo", device=torch.device("cpu"))
    d.check_device(torch.zeros(2))  # a CPU tensor is what gloo takes
    meta = torch.empty(4, device="meta")
    with pytest.raises(RuntimeError, match="gloo collective was handed a tensor on meta.*takes cpu tensors"):
        d.check_device(meta)
    with pytest.raises(RuntimeError, match="gloo collective was handed a tensor on meta"):
        d.all_reduce_sum(meta)
    with pytest.raises(RuntimeError, match="gloo collective was handed a tensor on meta"):
        d.broadcast_parameters(tiny_model().to("meta"))
    with pytest.raises((RuntimeError, NotImplementedError)):  # cannot even be moved to the CPU
        d.all_gather(meta)


def test_single_process_dist_calls_no_collective(monkeypatch):
    forbid_collectives(monkeypatch)
    d = Dist()
    assert not d.enabled and d.is_main
    t = torch.ones(3)
    assert d.all_reduce_sum(t) is t and d.all_gather(t) == [t]
    assert d.sum_values([1, 2.5]) == [1.0, 2.5]
    assert d.broadcast_str("x") == "x" and d.agree_on_failure(None) is None
    d.broadcast_parameters(tiny_model())
    d.barrier()


# --- a whole training run against a recording fake peer ------------------------------------------------------------

class Recorder:
    """torch.distributed's collectives as an identical peer would answer them (world size 2), recording each call:
    its name, the tensors handed over and which function of which file called it."""

    def __init__(self, device):
        self.device = device
        self.calls = []

    def note(self, name, tensors, **extra):
        caller = sys._getframe(2)
        self.calls.append(dict(name=name, devices=[t.device for t in tensors], dtypes=[t.dtype for t in tensors],
                               shapes=[tuple(t.shape) for t in tensors], tensors=list(tensors),
                               file=caller.f_code.co_filename, func=caller.f_code.co_name, **extra))

    def all_reduce(self, tensor, op=tdist.ReduceOp.SUM, group=None, async_op=False):
        self.note("all_reduce", [tensor], op=op)
        assert op == tdist.ReduceOp.SUM
        tensor.mul_(2)  # the peer holds the same values

    def all_gather(self, tensor_list, tensor, group=None, async_op=False):
        self.note("all_gather", [tensor, *tensor_list])
        assert len(tensor_list) == 2
        for part in tensor_list:
            part.copy_(tensor)

    def broadcast(self, tensor, src=0, group=None, async_op=False):
        self.note("broadcast", [tensor], src=src)

    def broadcast_object_list(self, object_list, src=0, group=None, device=None):
        self.note("broadcast_object_list", [], src=src, objects=list(object_list))

    def barrier(self, group=None, async_op=False, device_ids=None):
        self.note("barrier", [])


def test_training_run_sends_every_collective_through_dist_on_its_device(tmp_path, monkeypatch):
    device = torch.device("cpu")
    fake = Recorder(device)
    for name in COLLECTIVES:
        monkeypatch.setattr(tdist, name, getattr(fake, name))
    d = Dist(rank=0, world=2, backend="gloo", device=device)
    monkeypatch.setattr(cdist, "from_environment", lambda device_name="auto": (d, device))
    shutdowns = []
    monkeypatch.setattr(cdist, "shutdown", lambda dist_, together=True: shutdowns.append((dist_, together)))
    checked = []
    real_check = Dist.check_device
    monkeypatch.setattr(Dist, "check_device", lambda self, t: (checked.append(t), real_check(self, t))[1])
    broadcast_modules = []
    real_broadcast = Dist.broadcast_parameters
    monkeypatch.setattr(Dist, "broadcast_parameters",
                        lambda self, module: (broadcast_modules.append(module), real_broadcast(self, module))[1])

    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=4000)
    steps, eval_every = 6, 3
    result = charrnn.train(
        str(corpus),
        ModelConfig(hidden_size=16, num_layers=2),
        charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=steps, eval_every=eval_every, warmup_steps=2,
                            val_frac=0.1, test_frac=0.1, device="cpu"),
        run_dir=str(tmp_path / "run"),
        progress=False,
    )
    assert result.step == steps
    assert shutdowns == [(d, True)]
    calls = fake.calls
    assert calls, "no collective was called"

    # every collective came from a method of Dist (charrnn/training/distributed.py), never from torch.distributed directly
    for call in calls:
        assert call["file"] == cdist.__file__, (call["name"], call["file"], call["func"])
    # every tensor handed to a collective was on dist.device, and was checked by Dist first
    tensor_calls = [c for c in calls if c["name"] in ("all_reduce", "all_gather", "broadcast")]
    for call in tensor_calls:
        assert all(dev == d.device for dev in call["devices"]), call
        handed = call["tensors"][0]
        assert any(t is handed or (t.data_ptr() == handed.data_ptr() and t.device == handed.device)
                   for t in checked), call["name"]

    # the initial parameters were broadcast from rank 0: one broadcast per parameter and buffer, the model's own
    assert len(broadcast_modules) == 1
    model = broadcast_modules[0]
    own = list(model.parameters()) + list(model.buffers())
    broadcasts = [c for c in calls if c["name"] == "broadcast"]
    assert len(broadcasts) == len(own) == 8
    assert all(c["src"] == 0 for c in broadcasts)
    assert [c["tensors"][0].data_ptr() for c in broadcasts] == [t.data.data_ptr() for t in own]
    first_step = next(i for i, c in enumerate(calls) if c["name"] == "all_reduce"
                      and c["dtypes"] == [torch.float32])  # the first step's gradients
    assert max(i for i, c in enumerate(calls) if c["name"] == "broadcast") < first_step  # before training

    # per step: the gradients (one flat fp32 buffer of every parameter) and the agreed values (mean loss, any
    # non-finite step, signals, elapsed time: 5 float64 values) are all-reduced, every step
    n_params = sum(p.numel() for p in model.parameters())
    # (before training, e.g. while the run is set up, other agreements may come: only the training is counted)
    reduces = [c for c in calls[first_step:] if c["name"] == "all_reduce"]
    grads = [c for c in reduces if c["func"] == "average_gradients" or c["shapes"] == [(n_params,)]]
    agreed = [c for c in reduces if c["dtypes"] == [torch.float64] and c["shapes"] == [(5,)]]
    sums = [c for c in reduces if c["dtypes"] == [torch.float64] and c["shapes"] == [(2,)]]
    assert len(grads) == steps and all(c["shapes"] == [(n_params,)] and c["dtypes"] == [torch.float32]
                                       for c in grads)
    assert len(agreed) == steps
    # in order, and nothing else: each step's gradient reduction comes before that step's agreement
    kind = {id(c): k for k, group in (("g", grads), ("a", agreed), ("s", sums)) for c in group}
    order = [kind.get(id(c), "?") for c in reduces]
    assert "?" not in order and "".join(o for o in order if o != "s") == "ga" * steps, order

    # evaluation: the (nats, chars) of every rank summed by a collective, once per evaluation
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evaluations = [r for r in rows if r.get("val_loss") is not None]
    assert len(evaluations) == steps // eval_every
    assert len(sums) == len(evaluations)
    # the fake peer doubled every sum: the validation loss is what this rank measured
    assert result.last_val_loss == pytest.approx(evaluations[-1]["val_loss"])

    # checkpoints gather every rank's hidden state and RNG state (on dist.device), and agree on failure
    saves = len(evaluations)  # a checkpoint at each evaluation
    gathers = [c for c in calls[first_step:] if c["name"] == "all_gather"]
    assert len(gathers) == 2 * saves
    # before training: the run directory and the verdict on creating it
    # (outside torchrun the run directory is made before any collective: at least the size/dropout agreement)
    assert len([c for c in calls[:first_step] if c["name"] == "broadcast_object_list"]) >= 1
    assert len([c for c in calls[first_step:] if c["name"] == "broadcast_object_list"]) == saves
    ckpt = torch.load(tmp_path / "run" / "latest.pt", map_location="cpu", weights_only=False)
    assert ckpt["progress"]["world_size"] == 2
    assert ckpt["hidden"].shape[-2] == 4  # both ranks' 2 streams each
    assert len(ckpt["rng"]["torch_ranks"]) == 2


# --- equal initial weights across real processes whose seeds differ ------------------------------------------------

def _broadcast_worker(rank, tmp):
    tdist.init_process_group("gloo", init_method=f"file://{tmp}/pg", world_size=2, rank=rank)
    try:
        torch.manual_seed(rank + 100)
        model = CharRNN(ModelConfig(vocab_size=20, hidden_size=16, num_layers=2))
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{tmp}/before{rank}.pt")
        Dist(rank, 2, backend="gloo", device=torch.device("cpu")).broadcast_parameters(model)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{tmp}/after{rank}.pt")
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def test_ranks_start_from_equal_weights_when_seeds_differ(tmp_path):
    import torch.multiprocessing as mp

    context = mp.spawn(_broadcast_worker, args=(str(tmp_path),), nprocs=2, join=False)
    deadline = time.monotonic() + hang_guard(90)
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the two gloo processes did not finish within {hang_guard(90):.0f} s "
                            "(a hang in a collective?)")
    finally:
        for proc in context.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    before0, before1, after0, after1 = (load(n) for n in ("before0.pt", "before1.pt", "after0.pt", "after1.pt"))
    assert set(before0) == set(after1) and len(before0) == 8
    assert any(not torch.equal(before0[k], before1[k]) for k in before0)  # the seeds really differed
    for k in before0:
        assert torch.equal(after0[k], before0[k]), k  # rank 0 keeps its own
        assert torch.equal(after1[k], before0[k]), k  # rank 1 now holds rank 0's


# --- backends and the process group under torchrun ----------------------------------------------------------------

def test_backend_for():
    assert backend_for("cuda") == "nccl"
    assert backend_for("cpu") == "gloo"
    with pytest.raises(UsageError) as info:
        backend_for("mps")
    message = str(info.value)
    assert "\n" not in message and "mps" in message and "--device cuda" in message and "--device cpu" in message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_from_environment_makes_a_gloo_group_at_world_size_one(monkeypatch):
    assert not tdist.is_initialized()
    for name, value in dict(WORLD_SIZE=1, LOCAL_RANK=0, RANK=0, MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=free_port()).items():
        monkeypatch.setenv(name, str(value))
    d, device = cdist.from_environment("cpu")
    try:
        assert tdist.is_initialized() and tdist.get_backend() == "gloo" and tdist.get_world_size() == 1
        assert d.enabled and (d.rank, d.world, d.local_rank, d.backend) == (0, 1, 0, "gloo")
        assert device == torch.device("cpu") and d.device == device
        assert d.sum_values([1.5, 2.0]) == [1.5, 2.0]  # a real all-reduce over the group
        assert [t.tolist() for t in d.all_gather(torch.arange(3))] == [[0, 1, 2]]
    finally:
        cdist.shutdown(d)
        if tdist.is_initialized():
            tdist.destroy_process_group()
    assert not tdist.is_initialized()
