"""The tanh recurrence compiled with numba (charrnn/model/compiled.py): chosen where it can run, the same numbers run to
run and at any thread count, close to the torch loop in float32, and absent without harm (the torch loop runs).
Its float64 equality with autograd on every shape is in tests/model/test_fused.py (the `jit` routes)."""

from __future__ import annotations

import re

import pytest
import torch

from charrnn.model import compiled
from charrnn.config import ModelConfig
from charrnn.model.fused import tanh_stack_parts
from charrnn.model.network import CharRNN


def _inputs(L, T, B, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    x1, h0 = r(T, B, H, scale=0.5), r(L, B, H, scale=0.5)
    w_hh = [r(H, H, scale=H**-0.5) for _ in range(L)]
    w_xh = [r(H, H, scale=H**-0.5) for _ in range(L - 1)]
    b = [r(H, scale=0.1) for _ in range(L - 1)]
    masks = (torch.rand(L - 1, T, B, H, generator=g) > 0.3).to(dtype) / 0.7
    return [x1, h0, w_hh, w_xh, b, masks]


def _run(args, jit):
    x1, h0, w_hh, w_xh, b, masks = args
    params = [x1, h0, *w_hh, *w_xh, *b]
    top, lower, last = tanh_stack_parts(x1, h0, w_hh, w_xh, b, masks, jit=jit)
    g = torch.Generator().manual_seed(9)
    total = (top * torch.randn(top.shape, generator=g)).sum() + (last * torch.randn(last.shape, generator=g)).sum()
    return [top.detach(), last.detach(), *torch.autograd.grad(total, params)]


def test_numba_is_installed_and_compiles():
    """numba is a dependency (pyproject.toml): where the README's install command ran, the compiled route runs."""
    assert compiled.available()
    assert compiled.usable(torch.zeros(1)) and compiled.usable(torch.zeros(1, dtype=torch.float64))
    assert not compiled.usable(torch.zeros(1, dtype=torch.bfloat16))  # bf16 products stay on the torch loop
    assert not compiled.usable(torch.zeros(1, device="meta"))  # stands in for a GPU


def test_same_numbers_run_to_run_and_at_any_thread_count():
    """Each output of the compiled loop is one thread's fixed sequence of operations: bitwise equal run to run, and
    at 1 and 2 threads for what the loop alone computes (one layer's states and dL/dx; the weight gradients are
    torch's GEMMs, which may sum in another order at another thread count). On a one-core machine numba starts one
    thread: the check runs in a child given two (NUMBA_NUM_THREADS=2; the threads then share the core)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS >= 2:
        _check_thread_counts()
        return
    import subprocess
    import sys
    from pathlib import Path

    from conftest import cli_env, hang_guard

    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import numba; assert numba.config.NUMBA_NUM_THREADS == 2; "
            "import test_compiled; test_compiled._check_thread_counts(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(NUMBA_NUM_THREADS=2), capture_output=True,
                          text=True, timeout=hang_guard(120))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _check_thread_counts():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        args = _inputs(2, 9, 11, 24)
        first, again = _run(args, jit=True), _run(args, jit=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
        one_layer = _inputs(1, 9, 11, 24)
        two = _run(one_layer, jit=True)[:3]
        torch.set_num_threads(1)
        one = _run(one_layer, jit=True)[:3]  # top, last, dL/dx1
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_float32_tracks_the_torch_loop():
    args = _inputs(3, 20, 6, 33)
    for got, want in zip(_run(args, jit=True), _run(args, jit=False)):
        assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()


def test_large_inputs_saturate_without_nan():
    """tanh(v) = sign(v) (1 - e) / (1 + e) with e = exp(-2|v|): no overflow for |v| in the thousands."""
    x1 = torch.tensor([[[-3000.0, -20.0, 0.0, 1e-6, 20.0, 3000.0]]])
    zero = torch.zeros(1, 1, 6)
    w = [torch.zeros(6, 6)]
    top, _, _ = tanh_stack_parts(x1, zero, w, [], [], jit=True)
    assert torch.allclose(top, torch.tanh(x1), atol=1e-7)


def test_without_numba_the_torch_loop_runs(monkeypatch):
    """numba missing (or failing to load here): nothing is available, the default route is the torch loop with the
    same results, and asking for the compiled route says what is missing."""
    args = _inputs(2, 5, 3, 8)
    want = _run(args, jit=None)
    monkeypatch.setattr(compiled, "_state", {"recur": None})  # as _load leaves it when numba fails to import
    monkeypatch.setattr(compiled, "recurrence", None)  # a call would fail
    assert not compiled.available() and not compiled.usable(torch.zeros(1))
    got = _run(args, jit=None)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=2e-5)
    with pytest.raises(RuntimeError, match="numba"):
        _run(args, jit=True)


def test_asking_for_the_compiled_route_with_bf16_says_why():
    args = _inputs(1, 3, 2, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16"):
        _run(args, jit=True)


def test_a_failing_import_is_not_available(monkeypatch):
    import sys

    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    assert not compiled.available() and not compiled.available("float64")


def test_float32_tanh_is_within_two_ulps_everywhere():
    """The float32 kernel's tanh (a float64 polynomial for exp, a series near 0) against float64 tanh: relative
    error within 2 float32 ulps from 1e-30 to the clamp and past it, as torch's own float32 tanh."""
    import numpy as np

    from charrnn.model import _kernels

    magnitudes = np.concatenate([np.logspace(-30, 1.2, 200001), np.linspace(0, 12, 200001)])
    v = np.concatenate([magnitudes, -magnitudes]).astype(np.float32)
    got = v.copy()
    _kernels._tanh_fast(got)
    want = np.tanh(v.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 2.0
    nan = np.array([np.nan, 1.0], np.float32)
    _kernels._tanh_fast(nan)
    assert np.isnan(nan[0])  # a diverging run still shows NaN


def test_model_takes_the_compiled_route_on_cpu(monkeypatch):
    calls = []
    real = compiled.recurrence
    monkeypatch.setattr(compiled, "recurrence", lambda *a, **k: (calls.append(k.get("backward", False)), real(*a, **k)))
    model = CharRNN(ModelConfig(vocab_size=7, hidden_size=6, num_layers=2))
    ids = torch.randint(0, 7, (3, 5))
    _, loss, _ = model(ids, None, ids)
    loss.backward()
    assert calls == [False, False, True, True]  # two layers forward, two backward
    calls.clear()
    model.jit = False
    model(ids, None, ids)[1].backward()
    assert calls == []



# ----------------------------------------------------------------------------------------------------------------
# forks: a child forked after this process started numba's threads computes the same numbers, on its own thread

FORK_TIMEOUT = 300  # a hang guard only: the child's work takes seconds


def _train_tiny(corpus: str, run_dir: str, seed: int = 3) -> tuple:
    """A tiny run through the library; (its best validation loss, its final weights)."""
    import charrnn
    from charrnn.store.checkpoint import load_checkpoint

    result = charrnn.train(corpus, charrnn.ModelConfig(hidden_size=32, num_layers=2),
                           charrnn.TrainConfig(max_steps=8, batch_size=4, seq_len=16, warmup_steps=2, eval_every=8,
                                               val_frac=0.1, test_frac=0.0, seed=seed),
                           run_dir=run_dir, progress=False)
    return result.best_val_loss, load_checkpoint(result.latest)["model"]


def _in_child(corpus: str, run_dir: str) -> tuple:
    from charrnn.model import compiled

    loss, weights = _train_tiny(corpus, run_dir)
    return loss, {k: v.numpy() for k, v in weights.items()}, bool(compiled._state.get("forked"))


def test_a_child_forked_after_training_trains_like_a_fresh_process(tmp_path):
    """The parent trains (numba's OpenMP threads start), then a multiprocessing worker of the fork context trains
    the same run: it finishes (no hang, no "Terminating: fork()" SIGTERM taken for a signal, no garbage trained on),
    on the serial kernel, with the weights and loss of the same run in a fresh process."""
    import json
    import multiprocessing
    import subprocess
    import sys

    from conftest import ROOT, cli_env, make_corpus

    corpus = str(make_corpus(tmp_path / "c.txt", 4000))
    parent_loss, _ = _train_tiny(corpus, str(tmp_path / "parent"))
    import numba

    assert numba.threading_layer()  # the parent's numba threads have started (raises ValueError otherwise)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        loss, weights, forked = pool.apply_async(_in_child, (corpus, str(tmp_path / "child"))).get(FORK_TIMEOUT)
    assert forked  # the child knew, and ran the serial kernel
    script = ("import json, sys; sys.path.insert(0, sys.argv[3]); from test_compiled import _train_tiny;"
              "loss, w = _train_tiny(sys.argv[1], sys.argv[2]); import torch;"
              "torch.save(w, sys.argv[2] + '.pt'); print(json.dumps(loss))")
    fresh = subprocess.run([sys.executable, "-c", script, corpus, str(tmp_path / "fresh"), str(ROOT / "tests" / "model")],
                           env=cli_env(), capture_output=True, text=True, timeout=FORK_TIMEOUT)
    assert fresh.returncode == 0, fresh.stderr
    fresh_loss = json.loads(fresh.stdout.strip().splitlines()[-1])
    fresh_weights = torch.load(str(tmp_path / "fresh") + ".pt")
    assert loss == fresh_loss == parent_loss
    assert weights.keys() == fresh_weights.keys()
    for name, w in fresh_weights.items():
        assert torch.equal(torch.from_numpy(weights[name]), w), name


def _recur_in_child(args, backward):
    from charrnn.model import compiled

    pre, out, first, w, hs = (t.clone() for t in args)
    compiled.recurrence(pre, out, first, w, hs, backward=backward)
    return out.numpy(), bool(compiled._state.get("forked"))


@pytest.mark.parametrize("backward", [False, True])
def test_the_serial_kernel_of_a_forked_child_gives_the_parallel_numbers(backward):
    """B = 11: two full blocks of 4 rows and a block of 3, over 2 threads in the parent and on one in the child."""
    import multiprocessing

    import numba

    T, B, H = 7, 11, 24
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(T, B, H, generator=g), torch.empty(T, B, H), torch.randn(B, H, generator=g),
            torch.randn(H, H, generator=g) * H**-0.5, torch.rand(T, B, H, generator=g) * 2 - 1]
    if backward:
        args[1] = args[0].clone()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, threads))
        want = _recur_in_child(args, backward)[0]
    finally:
        torch.set_num_threads(threads)
    assert numba.threading_layer()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got, forked = pool.apply_async(_recur_in_child, (args, backward)).get(FORK_TIMEOUT)
    assert forked
    assert (got == want).all()


def test_a_parallel_region_that_did_not_run_is_an_error(monkeypatch):
    """What numba's OpenMP layer does in a forked child (returns without computing) stands in a kernel here: the
    caller finds blocks not marked done and raises, leaving nothing to be taken for a result."""
    from charrnn.model import compiled

    assert compiled.available()
    monkeypatch.setitem(compiled._state, "recur", lambda *args: None)  # computes nothing, marks nothing
    monkeypatch.setitem(compiled._state, "forked", False)
    T, B, H = 2, 5, 3
    with pytest.raises(RuntimeError, match="computed 0 of its 2 blocks"):
        compiled.recurrence(torch.zeros(T, B, H), torch.empty(T, B, H), torch.zeros(B, H), torch.zeros(H, H))


# ----------------------------------------------------------------------------------------------------------------
# inputs: the compiled loop has no bounds checks, so what it must not see is refused before it runs


def _good(T=3, B=5, H=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return dict(pre=torch.randn(T, B, H, generator=g, dtype=dtype), out=torch.full((T, B, H), 7.0, dtype=dtype),
                first=torch.randn(B, H, generator=g, dtype=dtype), w=torch.randn(H, H, generator=g, dtype=dtype),
                hs=torch.rand(T, B, H, generator=g, dtype=dtype))


BAD = {
    "pre too short": (lambda a: a.update(pre=a["pre"][:2]), "pre must be (3, 5, 4)"),
    "pre wider": (lambda a: a.update(pre=torch.zeros(3, 5, 6)), "pre must be (3, 5, 4)"),
    "first batch": (lambda a: a.update(first=torch.zeros(4, 4)), "first must be (5, 4)"),
    "first 3-d": (lambda a: a.update(first=torch.zeros(1, 5, 4)), "first must be (5, 4)"),
    "w rectangular": (lambda a: a.update(w=torch.zeros(4, 8)), "w must be (4, 4)"),
    "hs short": (lambda a: a.update(hs=torch.zeros(2, 5, 4)), "hs must be (3, 5, 4)"),
    "hs missing": (lambda a: a.update(hs=None), "needs hs"),
    "out 2-d": (lambda a: a.update(out=torch.zeros(5, 4)), "out must be (T, B, H)"),
    "w float64": (lambda a: a.update(w=a["w"].double()), "w is torch.float64"),
    "pre int": (lambda a: a.update(pre=torch.zeros(3, 5, 4, dtype=torch.int32)), "pre is torch.int32"),
    "w transposed view": (lambda a: a.update(w=a["w"].t()), "w must be contiguous"),
    "pre strided": (lambda a: a.update(pre=torch.zeros(3, 5, 8)[..., ::2]), "pre must be contiguous"),
    "first inside out": (lambda a: a.update(first=a["out"][1]), "first must not share memory with out"),
    "w a list": (lambda a: a.update(w=[[0.0] * 4] * 4), "w must be a tensor"),
    "out bf16": (lambda a: a.update(out=a["out"].bfloat16()), "bfloat16"),
}


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("case", sorted(BAD))
def test_wrong_inputs_are_refused_before_the_loop_runs(case, backward, monkeypatch):
    """Each wrong shape, dtype, layout or alias is refused with what is wrong, and the kernel is never called."""
    from charrnn.model import compiled

    assert compiled.available()
    calls = []
    monkeypatch.setitem(compiled._state, "recur", lambda *a: calls.append(a))
    monkeypatch.setitem(compiled._state, "serial", lambda *a: calls.append(a))
    if case.startswith("hs") and not backward:
        pytest.skip("the forward loop takes no hs")
    args = _good()
    change, message = BAD[case]
    change(args)
    out_before = args["out"].clone()
    for prepare in (False, True):
        call = compiled.prepare if prepare else compiled.recurrence
        with pytest.raises((ValueError, TypeError, RuntimeError), match=re.escape(message)):
            call(args["pre"], args["out"], args["first"], args["w"], args["hs"], backward=backward)
    assert calls == []
    assert torch.equal(args["out"], out_before)


def test_right_inputs_run_and_never_compile_at_call_time():
    """After `available()`, the kernel takes the inputs the checks let through without compiling anything: its
    dispatcher is closed, so a signature it was not compiled for is an error, never a compile."""
    import numpy as np

    from charrnn.model import _kernels, compiled

    assert compiled.available() and compiled.available("float64")
    assert not compiled._state.get("forked")
    before = {k: list(k.signatures) for k in (_kernels.recur, _kernels.recur_serial)}
    for dtype in (torch.float32, torch.float64):
        for T, B, H in ((1, 1, 1), (3, 5, 4), (2, 3, 7), (4, 9, 2)):
            a = _good(T, B, H, dtype)
            compiled.recurrence(a["pre"], a["out"], a["first"], a["w"])
            compiled.recurrence(a["out"], a["out"], torch.zeros(B, H, dtype=dtype), a["w"], a["hs"], backward=True)
            compiled.prepare(a["pre"], a["out"], a["first"], a["w"])()
    assert {k: list(k.signatures) for k in before} == before
    x = np.zeros((2, 5, 3), np.int64)
    with pytest.raises(TypeError):
        _kernels.recur(x, x, x[0], x[0, :3], x, False, True, np.zeros(2, np.uint8))


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("B", [1, 2, 3, 5, 6, 7, 8])
def test_every_batch_size_matches_the_torch_loop(B, backward):
    """B < 4 (one block of only its own rows) and B % 4 != 0 (a last block of 1-3 rows): the compiled loop against
    the torch loop, float64, forward states and the backward recurrence, on both kernels (parallel and serial)."""
    from charrnn.model import compiled
    from charrnn.model.fused import _backward_steps

    T, H = 6, 9
    a = _good(T, B, H, torch.float64)
    pre, first, w, hs = a["pre"], a["first"], a["w"], torch.tanh(a["pre"])
    want = torch.empty(T, B, H, dtype=torch.float64)
    if backward:  # dz_t = (g_t + dz_{t+1} W) * (1 - h_t^2)
        want.copy_(pre)
        _backward_steps(want, hs, w, None)
    else:
        h = first
        for t in range(T):
            h = want[t].copy_(torch.tanh(pre[t] + h @ w.t()))
    results = []
    for serial in (False, True):
        saved = compiled._state.get("forked")
        compiled._state["forked"] = serial
        try:
            if backward:
                out = pre.clone()
                compiled.recurrence(out, out, torch.zeros(B, H, dtype=torch.float64), w.t().contiguous(), hs,
                                    backward=True)
            else:
                out = torch.empty(T, B, H, dtype=torch.float64)
                compiled.recurrence(pre, out, first, w)
        finally:
            compiled._state["forked"] = saved
        assert torch.allclose(out, want, rtol=1e-12, atol=1e-12), (out - want).abs().max()
        results.append(out)
    assert torch.equal(*results)


def test_a_forked_child_trains_on_the_torch_loop_too(tmp_path, monkeypatch):
    """Without numba (the torch loop), a child forked after training still finishes, with the parent's numbers:
    torch's own OpenMP threads would hang there, so the child runs torch on one thread."""
    import multiprocessing

    from conftest import make_corpus

    monkeypatch.setattr(compiled, "_state", {"recur": None})  # as _load leaves it when numba fails to import
    corpus = str(make_corpus(tmp_path / "c.txt", 4000))
    parent_loss, parent_weights = _train_tiny(corpus, str(tmp_path / "parent"))
    with multiprocessing.get_context("fork").Pool(1) as pool:
        loss, weights, forked = pool.apply_async(_in_child, (corpus, str(tmp_path / "child"))).get(FORK_TIMEOUT)
    assert not forked  # no numba threads to fall back from
    assert loss == parent_loss
    for name, w in parent_weights.items():
        assert torch.allclose(torch.from_numpy(weights[name]), w, atol=1e-6), name
