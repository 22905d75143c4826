"""The fused tanh RNN equals autograd on the explicit equation (float64): outputs and every gradient, on both of its
routes (the torch loop, serial or pipelined, and the loop compiled with numba: `jit`)."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.model.fused import PIPELINE_MIN_HIDDEN, choose_workers, default_workers, tanh_stack_parts
from charrnn.model.network import CharRNN

from reference import tanh_stack_reference

import charrnn.model.network as model_module

F64 = torch.float64
SHAPES = [(1, 1, 1, 3), (1, 4, 2, 5), (2, 1, 1, 4), (2, 6, 3, 4), (3, 5, 1, 3), (3, 37, 2, 4)]  # L, T, B, H


def _inputs(L, T, B, H, seed=0, dropout=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=F64) * 0.7).requires_grad_()

    x1, h0 = r(T, B, H), r(L, B, H)  # a nonzero carried state
    w_hh, w_xh, b = [r(H, H) for _ in range(L)], [r(H, H) for _ in range(L - 1)], [r(H) for _ in range(L - 1)]
    masks = None
    if dropout and L > 1:
        masks = (torch.rand(L - 1, T, B, H, generator=g, dtype=F64) > 0.4).to(F64) / 0.6
    return x1, h0, w_hh, w_xh, b, masks


# (workers, jit): the torch loop serial and pipelined over 2 and 3 threads, and the compiled loop
ROUTES = [(1, False), (2, False), (3, False), (1, True)]


def tanh_stack(x1, h0, w_hh, w_xh, b, masks=None, workers=None, jit=None):
    """Every hidden state (L, T, B, H) from `tanh_stack_parts`, the layers joined as the reference returns them."""
    top, lower, _ = tanh_stack_parts(x1, h0, w_hh, w_xh, b, masks, workers, jit)
    return torch.cat([lower, top[None]])


def _assert_same_values_and_grads(out, ref, inputs, seed=1):
    assert torch.allclose(out, ref, atol=1e-12, rtol=1e-10)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    got = torch.autograd.grad(out, inputs, grad_out)
    want = torch.autograd.grad(ref, inputs, grad_out)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12, rtol=1e-10), (g - w).abs().max()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("T,B,H", [(1, 1, 3), (5, 2, 4), (9, 1, 6), (4, 6, 7), (3, 9, 2)])
def test_single_layer_recurrence_equals_autograd(T, B, H, jit):
    x1, h0, w_hh, *_ = _inputs(1, T, B, H)
    inputs = (x1, h0, w_hh[0])
    out = tanh_stack(x1, h0, w_hh, [], [], workers=1, jit=jit)
    _assert_same_values_and_grads(out, tanh_stack_reference(x1, h0, w_hh, [], []), inputs)


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("workers,jit", ROUTES)
@pytest.mark.parametrize("L,T,B,H", SHAPES)
def test_stack_equals_autograd(L, T, B, H, workers, jit, dropout):
    x1, h0, w_hh, w_xh, b, masks = _inputs(L, T, B, H, dropout=dropout)
    inputs = (x1, h0, *w_hh, *w_xh, *b)
    out = tanh_stack(x1, h0, w_hh, w_xh, b, masks, workers=workers, jit=jit)
    ref = tanh_stack_reference(x1, h0, w_hh, w_xh, b, masks)
    _assert_same_values_and_grads(out, ref, inputs)


@pytest.mark.parametrize("used", ["top", "last", "top+last", "lower"])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("workers,jit", [(1, False), (2, False), (1, True)])
@pytest.mark.parametrize("L,T,B,H", [(1, 4, 2, 3), (2, 6, 3, 4), (3, 37, 2, 4), (2, 5, 7, 5)])
def test_stack_parts_with_gradients_on_some_outputs(L, T, B, H, workers, jit, dropout, used):
    """Training back-propagates into the top layer and maybe the last states only; the other outputs' gradients
    reach backward as None (no tensor of zeros), and the gradients must still equal autograd's."""
    x1, h0, w_hh, w_xh, b, masks = _inputs(L, T, B, H, dropout=dropout)
    inputs = (x1, h0, *w_hh, *w_xh, *b)
    top, lower, last = tanh_stack_parts(x1, h0, w_hh, w_xh, b, masks, workers=workers, jit=jit)
    ref = tanh_stack_reference(x1, h0, w_hh, w_xh, b, masks)
    assert torch.allclose(top, ref[-1]) and torch.allclose(lower, ref[:-1]) and torch.allclose(last, ref[:, -1])
    g = torch.Generator().manual_seed(7)
    pairs = {"top": (top, ref[-1]), "last": (last, ref[:, -1]), "lower": (lower, ref[:-1])}
    got_total, want_total = 0, 0
    for name in used.split("+"):
        got, want = pairs[name]
        weight = torch.randn(got.shape, generator=g, dtype=F64)
        got_total = got_total + (got * weight).sum()
        want_total = want_total + (want * weight).sum()
    got = torch.autograd.grad(got_total, inputs, allow_unused=True)
    want = torch.autograd.grad(want_total, inputs, allow_unused=True)
    for a, w in zip(got, want):
        if w is None:  # e.g. layer 3's weights when only the layers below it are used
            assert a is None or torch.count_nonzero(a) == 0
        else:
            assert torch.allclose(a, w, atol=1e-12, rtol=1e-10), (a - w).abs().max()


def test_reference_stack_is_the_equation():
    """The reference itself, against h^l_t = tanh(W^l_hh h^l_{t-1} + W^l_xh x^l_t + b^l) written per step."""
    L, T, B, H = 2, 3, 2, 3
    x1, h0, w_hh, w_xh, b, masks = _inputs(L, T, B, H, dropout=True)
    ref = tanh_stack_reference(x1, h0, w_hh, w_xh, b, masks)
    for t in range(T):
        for l in range(L):
            prev = h0[l] if t == 0 else ref[l, t - 1]
            inp = x1[t] if l == 0 else (ref[l - 1, t] * masks[l - 1, t]) @ w_xh[l - 1].t() + b[l - 1]
            assert torch.allclose(ref[l, t], torch.tanh(prev @ w_hh[l].t() + inp))


def test_worker_errors_reach_the_caller():
    x1, h0, w_hh, w_xh, b, _ = _inputs(2, 4, 1, 3)
    with pytest.raises(RuntimeError):
        tanh_stack(x1, h0, [w_hh[0], w_hh[1][:2]], w_xh, b, workers=2, jit=False)  # fails inside a worker


def _model(L, dropout, kernel, seed=0):
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=7, hidden_size=5, num_layers=L, dropout=dropout), kernel=kernel)
    return model.double()


def _loss_and_grads(model, ids, state, targets, seed):
    torch.manual_seed(seed)  # the same dropout masks for both models
    logits, loss, final = model(ids, state, targets)
    total = loss + final.pow(2).sum() * 0.1  # a gradient through the final state too
    grads = torch.autograd.grad(total, [state, *model.parameters()], allow_unused=True)
    return logits, final, grads


def _reference_parts(x, state, w_hh, w_xh, bias, masks=None, jit=None):
    """tanh_stack_parts' outputs (top layer, lower layers, last states) from the plain autograd reference."""
    hs = tanh_stack_reference(x, state, w_hh, w_xh, bias, masks)  # L, T, B, H
    return hs[-1], hs[:-1], hs[:, -1].clone()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_model_fused_equals_reference_kernel(L, dropout, jit, monkeypatch):
    ids = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(3))
    state = (torch.randn(L, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(4)) * 0.5).requires_grad_()
    results = []
    for stack in (model_module.tanh_stack_parts, _reference_parts):  # the model's fused call, then the reference
        monkeypatch.setattr(model_module, "tanh_stack_parts", stack)
        model = _model(L, dropout, "fused")
        model.jit = jit
        model.train()
        results.append(_loss_and_grads(model, ids, state, targets, seed=5))
    (la, fa, ga), (lb, fb, gb) = results
    assert torch.allclose(la, lb) and torch.allclose(fa, fb)
    for a, b in zip(ga, gb):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_model_fused_equals_torch_rnn_kernel(L):
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(3))
    state = (torch.randn(L, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(4)) * 0.5).requires_grad_()
    (la, fa, ga), (lb, fb, gb) = (
        _loss_and_grads(_model(L, 0.0, kernel), ids, state, targets, seed=5) for kernel in ("fused", "nn")
    )
    assert torch.allclose(la, lb) and torch.allclose(fa, fb)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-10)


def test_threads_setting_is_restored():
    before = torch.get_num_threads()
    x1, h0, w_hh, w_xh, b, _ = _inputs(2, 4, 1, 3)
    tanh_stack(x1, h0, w_hh, w_xh, b, workers=2, jit=False).sum().backward()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("with_masks", [False, True])
def test_activations_are_freed_without_waiting_for_the_cyclic_gc(with_masks, jit):
    """A view of the output kept on the autograd ctx makes a reference cycle: every step's (L, T, B, H)
    activations then stay alive until the cyclic collector runs (a leak of hundreds of MB a minute)."""
    import gc
    import weakref

    torch.manual_seed(0)
    L, T, B, H = 2, 5, 3, 4
    w_hh = [torch.randn(H, H, requires_grad=True) for _ in range(L)]
    w_xh = [torch.randn(H, H, requires_grad=True) for _ in range(L - 1)]
    b = [torch.zeros(H, requires_grad=True) for _ in range(L - 1)]
    masks = (torch.rand(L - 1, T, B, H) > 0.5).float() * 2 if with_masks else None
    gc.disable()
    try:
        out = tanh_stack(torch.randn(T, B, H), torch.zeros(L, B, H), w_hh, w_xh, b, masks=masks, jit=jit)
        alive = weakref.ref(out)
        out.sum().backward()
        del out
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("L", [1, 2, 3])
def test_bf16_products_track_fp32(L):
    """compute_dtype=bf16: the same maths with bf16 operands (fp32 accumulation); logits, state and gradients stay
    within bf16 rounding of the fp32 path, and come back as fp32."""
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, hidden_size=64, num_layers=L, dropout=0.0), kernel="fused")
    ids = torch.randint(0, 11, (4, 20), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 11, (4, 20), generator=torch.Generator().manual_seed(2))
    state = torch.randn(L, 4, 64, generator=torch.Generator().manual_seed(3)) * 0.5
    out = {}
    for dtype in (None, torch.bfloat16):
        model.compute_dtype = dtype
        model.zero_grad()
        logits, loss, final = model(ids, state, targets)
        loss.backward()
        out[dtype] = logits, loss, final, [p.grad.clone() for p in model.parameters()]
    (l32, loss32, f32, g32), (l16, loss16, f16, g16) = out[None], out[torch.bfloat16]
    assert l16.dtype == f16.dtype == loss16.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in g16)
    assert not torch.equal(l16, l32)  # it did run in bf16
    assert torch.allclose(l16, l32, atol=0.05) and torch.allclose(f16, f32, atol=0.05)
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    for a, b in zip(g16, g32):
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6


def test_pipeline_only_for_wide_stacks():
    assert default_workers(2, PIPELINE_MIN_HIDDEN // 2) == 1  # narrow: serial, on torch's intra-op threads
    assert default_workers(1, 4 * PIPELINE_MIN_HIDDEN) == 1  # one layer: nothing to overlap
    assert default_workers(3, PIPELINE_MIN_HIDDEN) == max(1, min(3, torch.get_num_threads()))


def test_pipeline_threads_only_on_cpu():
    """A GPU tensor never takes the threaded path (autocast and the current device are per thread, and the
    threads gain nothing there), whatever is asked; on CPU an explicit request is honoured."""
    wide = 4 * PIPELINE_MIN_HIDDEN
    for device_type in ("cuda", "mps", "xpu", "meta"):
        assert choose_workers(device_type, 3, wide) == 1
        assert choose_workers(device_type, 3, wide, requested=3) == 1
    assert choose_workers("cpu", 3, wide) == default_workers(3, wide)
    assert choose_workers("cpu", 2, 8, requested=2) == 2
    assert choose_workers("cpu", 3, wide, requested=1) == 1


def test_stack_off_the_cpu_runs_serially(monkeypatch):
    """tanh_stack_parts decides from its inputs' device: meta tensors (shapes only, no data) stand in for a GPU."""
    import charrnn.model.fused as fused

    seen, real = [], fused._run_tasks

    def recording(tasks, deps, workers):
        seen.append(workers)
        real(tasks, deps, workers)

    monkeypatch.setattr(fused, "_run_tasks", recording)
    L, T, B, H = 3, 4, 2, PIPELINE_MIN_HIDDEN
    w = [torch.empty(H, H, device="meta") for _ in range(L)]
    top, lower, last = tanh_stack_parts(torch.empty(T, B, H, device="meta"), torch.empty(L, B, H, device="meta"),
                                        w, w[1:], [torch.empty(H, device="meta")] * (L - 1), workers=3)
    assert top.shape == (T, B, H) and lower.shape == (L - 1, T, B, H) and last.shape == (L, B, H)
    assert seen == [1]
    x1, h0, w_hh, w_xh, b, _ = _inputs(2, 4, 1, 3)
    tanh_stack_parts(x1, h0, w_hh, w_xh, b, workers=2, jit=False)
    assert seen == [1, 2]  # on CPU the request stands (for the torch loop)


def test_cpu_dropout_masks_are_inverted_dropout_and_follow_torchs_seed():
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=8, num_layers=2, dropout=0.3), kernel="fused")
    like = torch.zeros(1, dtype=torch.bfloat16)
    torch.manual_seed(7)
    a = model._dropout_mask((4, 64, 256), like)
    b = model._dropout_mask((4, 64, 256), like)
    torch.manual_seed(7)
    again = model._dropout_mask((4, 64, 256), like)
    assert a.dtype == torch.bfloat16 and a.shape == (4, 64, 256)
    assert torch.equal(a, again) and not torch.equal(a, b)  # drawn from torch's (checkpointed) generator
    assert a.float().unique().tolist() == [0.0, torch.tensor(1 / 0.7).bfloat16().item()]
    kept = (a != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01  # 65,536 draws: the standard error is 0.002
    assert abs(a.float().mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
