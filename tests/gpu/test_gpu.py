"""GPU checks (pytest marker `gpu`): skipped with a reason where CUDA is absent, never failed for it.

Run on a GPU machine with `python -m pytest tests/gpu` (or `python benchmarks/gpu.py`, which runs these first).
Each cell and kernel in fp32 / bf16 / fp16; what really runs in bf16 under autocast; no host sync per step; resume
on the GPU; a GPU checkpoint sampled and evaluated on the CPU; torchrun with NCCL at world size 1 (and 2 where two
GPUs exist).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import charrnn
from charrnn.store.checkpoint import load_checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import cli_env, hang_guard, make_corpus, run_cli  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine: "
                                                            "python benchmarks/gpu.py)"),
]


def small(**kw) -> charrnn.TrainConfig:
    values = dict(batch_size=16, seq_len=32, warmup_steps=5, eval_every=40, max_steps=40, device="cuda")
    values.update(kw)
    return charrnn.TrainConfig(**values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("gpu") / "c.txt", 20000)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell,kernel", [("tanh", "nn"), ("tanh", "fused"), ("gru", "auto"), ("lstm", "auto")])
def test_each_cell_kernel_and_precision_trains(tmp_path, corpus, cell, kernel, precision):
    from charrnn.model.precision import plan_for

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=64, num_layers=2, cell=cell, dropout=0.1),
                           small(kernel=kernel, precision=precision), run_dir=str(tmp_path / "run"), progress=False)
    assert result.best_val_loss is not None and math.isfinite(result.best_val_loss)
    vocab = len(set(corpus.read_text()))
    # it learned something (40 steps of a 64-unit model: an LSTM is slowest to start, at 3.12 of ln 41 = 3.71)
    assert result.best_val_loss < 0.9 * math.log(vocab), result.val_history
    ckpt = load_checkpoint(result.latest)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ckpt["model"].values())
    assert ckpt["hidden"].dtype == torch.float32
    plan = plan_for(torch.device("cuda"), cell, 64, precision, kernel)
    assert ckpt["precision"]["core"] == plan.core and ckpt["precision"]["head"] == plan.head
    assert (ckpt["grad_scaler"] is not None) == (precision == "fp16")


def test_cudnn_weights_are_laid_out_once():
    """The nn tanh path's weights become views of one cuDNN buffer on the first call, and stay so: no
    'not part of single contiguous chunk of memory' copy on every call."""
    from charrnn.model.network import CharRNN

    model = CharRNN(charrnn.ModelConfig(vocab_size=20, hidden_size=64, num_layers=2), kernel="nn").cuda()
    ids = torch.randint(0, 20, (4, 8), device="cuda")
    model(ids, model.init_state(4))
    first = model._flat_ptrs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the compaction warning would now be an error
        _, loss, _ = model(ids, model.init_state(4), ids)
        loss.backward()
    assert first and model._flat_ptrs == first
    assert model.w_hh[0].data_ptr() in first


def test_cudnn_under_bf16_autocast_is_fp16_so_the_core_runs_outside_it():
    """The fact the precision policy rests on, checked on this torch; and that charrnn's bf16 plan keeps the
    cuDNN core in fp32 while the head runs in bf16."""
    from charrnn.model.network import CharRNN
    from charrnn.model.precision import plan_for

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = CharRNN(charrnn.ModelConfig(vocab_size=20, hidden_size=64, num_layers=2), kernel="nn").cuda()
    x = torch.randn(8, 4, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = model._tanh_layers_nn(x, model.init_state(4))
    assert out.dtype == torch.float16  # cuDNN under "bf16" autocast: half precision, as aten's rule says
    model.use_precision(plan_for(torch.device("cuda"), "tanh", 64, "bf16", "nn"))
    seen = {}
    core = model._torch_core

    def spy(inp, state):
        top, last = core(inp, state)
        seen["core"] = top.dtype
        return top, last

    model._torch_core = spy
    ids = torch.randint(0, 20, (4, 8), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, _, state = model(ids, model.init_state(4))
    assert seen["core"] == torch.float32 and logits.dtype == torch.bfloat16


def _count_syncs(corpus, tmp_path, steps: int) -> int:
    cfg = small(max_steps=steps, eval_every=10_000, log_every=10_000, kernel="nn", precision="fp32")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=64, num_layers=2, dropout=0.0), cfg,
                          run_dir=str(tmp_path / f"sync{steps}"), progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_host_sync_per_step(tmp_path, corpus):
    """Between log, evaluation and save points a step never waits for the GPU: 60 steps sync about as often as 20
    (one sync per step would add 40; the first H200 run counted 45 and 44)."""
    few, many = _count_syncs(corpus, tmp_path, 20), _count_syncs(corpus, tmp_path, 60)
    assert many <= few + 3, (few, many)


@pytest.mark.parametrize("kernel,dropout,tol", [("fused", 0.1, 1e-5), ("nn", 0.0, 1e-4)])
def test_resume_on_gpu(tmp_path, corpus, kernel, dropout, tol):
    """Stopped at 10 and resumed to 20 equals 20 straight: within `tol` (cuDNN kernels and atomics need not be
    bit-exact); the fused kernel's dropout draws from the CUDA generator, which checkpoints restore. cuDNN's own
    dropout state is not saved, so the nn kernel is checked without dropout."""
    model = charrnn.ModelConfig(hidden_size=64, num_layers=2, dropout=dropout)
    flat = dict(kernel=kernel, precision="fp32", warmup_steps=0, min_lr_frac=1.0, eval_every=10)
    full = charrnn.train(str(corpus), model, small(max_steps=20, **flat), run_dir=str(tmp_path / "full"),
                         progress=False)
    charrnn.train(str(corpus), charrnn.ModelConfig(hidden_size=64, num_layers=2, dropout=dropout),
                  small(max_steps=10, **flat), run_dir=str(tmp_path / "part"), progress=False)
    part = charrnn.train(resume=str(tmp_path / "part"), train_config=small(max_steps=20, **flat),
                         explicit={"max_steps"}, progress=False)
    a, b = load_checkpoint(full.latest), load_checkpoint(part.latest)
    for name in a["model"]:  # --ema's averages, and the weights trained
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=tol, atol=tol)
        torch.testing.assert_close(a["train_weights"][name], b["train_weights"][name], rtol=tol, atol=tol)
    assert a["progress"]["ema_updates"] == b["progress"]["ema_updates"] == 20
    torch.testing.assert_close(a["hidden"], b["hidden"], rtol=tol * 10, atol=tol * 10)


def test_gpu_checkpoint_samples_and_evaluates_on_cpu(tmp_path, corpus):
    run = tmp_path / "run"
    run_cli("train", corpus, "--hidden-size", "64", "--batch-size", "16", "--seq-len", "32", "--max-steps", "30",
            "--device", "cuda", "--run-dir", run, "-q", check=0, timeout=300)
    cpu = cli_env(CUDA_VISIBLE_DEVICES="")
    sampled = run_cli("sample", run, "-n", "200", "--seed", "3", env=cpu, check=0)
    assert len(sampled.stdout.decode()) >= 200
    evaluated = run_cli("eval", run / "latest.pt", corpus, "--json", env=cpu, check=0)
    import json

    on_cpu = json.loads(evaluated.stdout)["nats_per_char"]
    on_gpu = charrnn.evaluate(str(run / "latest.pt"), str(corpus), device="cuda")
    gpu_value = on_gpu["nats_per_char"] if isinstance(on_gpu, dict) else on_gpu.nats_per_char
    assert on_cpu == pytest.approx(gpu_value, rel=1e-3)


def torchrun(n, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "charrnn", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(CHARRNN_DIST_TIMEOUT=120), capture_output=True,
                          timeout=hang_guard(300))


def test_torchrun_nccl_world_size_1_trains_and_resumes(tmp_path, corpus):
    flags = ["--hidden-size", "64", "--batch-size", "16", "--seq-len", "32", "--eval-every", "10", "--device", "cuda"]
    proc = torchrun(1, "train", corpus, *flags, "--max-steps", "20", "--run-dir", "r", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    proc = torchrun(1, "train", "--resume", "r", "--max-steps", "30", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    ckpt = load_checkpoint(str(tmp_path / "r" / "latest.pt"))
    assert ckpt["progress"]["step"] == 30 and ckpt["progress"]["world_size"] == 1
    assert "cuda_ranks" in ckpt["rng"] and "torch_ranks" in ckpt["rng"]  # went through the NCCL collectives


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_nccl_two_gpus_equal_one_process(tmp_path, corpus):
    flags = ["--hidden-size", "64", "--batch-size", "16", "--seq-len", "32", "--eval-every", "10", "--dropout", "0",
             "--device", "cuda", "--kernel", "fused", "--precision", "fp32", "--max-steps", "20", "-q"]
    proc = torchrun(2, "train", corpus, *flags, "--run-dir", "two", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    run_cli("train", corpus, *flags, "--run-dir", tmp_path / "one", cwd=tmp_path, check=0, timeout=300)
    a, b = load_checkpoint(str(tmp_path / "two" / "latest.pt")), load_checkpoint(str(tmp_path / "one" / "latest.pt"))
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-5)
