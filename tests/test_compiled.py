"""The tanh recurrence compiled with numba (charrnn/compiled.py): chosen where it can run, the same numbers run to
run and at any thread count, close to the torch loop in float32, and absent without harm (the torch loop runs).
Its float64 equality with autograd on every shape is in tests/test_fused.py (the `jit` routes)."""

from __future__ import annotations

import pytest
import torch

from charrnn import compiled
from charrnn.config import ModelConfig
from charrnn.fused import tanh_stack_parts
from charrnn.model import CharRNN


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

    from charrnn import _kernels

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

