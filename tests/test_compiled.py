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
    torch's GEMMs, which may sum in another order at another thread count)."""
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
    """numba missing (or failing to compile here): `available()` is False, the default route is the torch loop with
    the same results, and asking for the compiled route says what is missing."""
    args = _inputs(2, 5, 3, 8)
    want = _run(args, jit=None)
    monkeypatch.setitem(compiled._state, "ok", False)
    monkeypatch.setattr(compiled, "recurrence", None)  # a call would fail
    got = _run(args, jit=None)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=2e-5)
    monkeypatch.undo()
    monkeypatch.setitem(compiled._state, "ok", False)
    with pytest.raises(RuntimeError, match="numba"):
        _run(args, jit=True)


def test_a_failing_import_is_not_available(monkeypatch):
    import sys

    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    assert not compiled.available()


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
