"""What bounds a training step of the fused tanh kernel: its matrix products timed alone, against the whole step.

    python benchmarks/floor.py            # 2x128, B64 T128 (the shape where the kernel is furthest from 2x)
    python benchmarks/floor.py 2x512 3x1024

For each shape it times, on this machine and in this process (medians of several rounds):
- the per-step recurrent products alone: L*T forward `addmm_` (B x H by H x H) and L*T backward ones, in a bare
  Python loop over pre-made views, fp32 and (H >= 256) bf16: the work no BPTT can skip or batch;
- the big products over all T*B rows: layer inputs above the first, their gradients, the weight gradients and
  the head (forward and both backward products);
- one whole training step of charrnn (as `charrnn train` sets it up) and of stock nn.RNN (bench_train.py);
- where numba is installed, a step with the compiled recurrence (charrnn/model/compiled.py) and the time spent in it,
  and what the step would reach if the recurrence ran at the sgemm peak: a bound for the rest of the step.
The sum of the first two is a floor for any implementation built on torch's GEMMs that runs the layers one
after the other: the elementwise work, the loss, the optimizer and Python come on top.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train import compare  # noqa: E402


def timed(fn, rounds: int = 7) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def recurrent_products(L: int, T: int, B: int, H: int, dtype) -> float:
    w = [torch.randn(H, H, dtype=dtype) * 0.05 for _ in range(L)]
    buf = torch.zeros(L, T, B, H, dtype=dtype)
    views = [buf[l].unbind(0) for l in range(L)]

    def run():
        for l in range(L):  # forward: h_t += h_{t-1} W^T
            w_t, prev = w[l].t(), views[l][0]
            for step in views[l][1:]:
                prev = step.addmm_(prev, w_t)
        for l in range(L):  # backward: dz_t += dz_{t+1} W
            later = views[l][-1]
            for step in reversed(views[l][:-1]):
                later = step.addmm_(later, w[l])

    return timed(run)


def kernel_recurrence(L: int, T: int, B: int, H: int) -> float:
    """charrnn's fused stack (charrnn/model/fused.py) alone on its torch loop, forward and backward, serial, fp32: the
    per-step products plus everything else the recurrence does per step (the elementwise ops, their dispatch,
    Python). The compiled loop is timed inside a whole step by `compiled_share`."""
    from charrnn.model.fused import tanh_stack_parts

    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(T, B, H, generator=g).requires_grad_()
    h0 = torch.zeros(L, B, H)
    w_hh = [(torch.randn(H, H, generator=g) * H**-0.5).requires_grad_() for _ in range(L)]
    w_xh = [(torch.randn(H, H, generator=g) * H**-0.5).requires_grad_() for _ in range(L - 1)]
    b = [torch.zeros(H, requires_grad=True) for _ in range(L - 1)]
    grad = torch.randn(T, B, H, generator=g)

    def run():
        top, _, _ = tanh_stack_parts(x1, h0, w_hh, w_xh, b, workers=1, jit=False)
        top.backward(grad)

    return timed(run, rounds=5)


def stack_products(L: int, T: int, B: int, H: int, absorbable_only: bool = False) -> float:
    """The fused stack's products over all T*B rows: the inputs of the layers above the first (forward) and their
    gradients, and the weight gradients. absorbable_only: the first two alone, the part a wavefront would move
    into its per-diagonal product."""
    h, dz, w = torch.randn(T * B, H), torch.randn(T * B, H), torch.randn(H, H)

    def run():
        for _ in range(L - 1):
            torch.mm(h, w.t())
            torch.mm(dz, w)
            if not absorbable_only:
                torch.mm(dz.t(), h)
        for _ in range(0 if absorbable_only else L):
            torch.mm(dz.t(), h)

    return timed(run)


def wavefront_products(L: int, T: int, B: int, H: int) -> float:
    """The pure-torch wavefront route: one (B, L*H) x (L*H, L*H) product per diagonal (T + L - 1 of them) forward
    and one backward, the input and recurrent weights of every layer in one block-bidiagonal matrix, so the
    stack steps with L times fewer calls (and (L*L)/(2L-1) times the recurrent and input FLOPs)."""
    W = torch.randn(L * H, L * H) * 0.01
    buf = torch.zeros(T + L, B, L * H)
    views = buf.unbind(0)

    def run():
        prev = views[0]
        for step in views[1:]:
            prev = step.addmm_(prev, W)
        later = views[-1]
        for step in reversed(views[:-1]):
            later = step.addmm_(later, W.t())

    return timed(run)


def big_products(L: int, T: int, B: int, H: int, V: int) -> float:
    rows = T * B
    h = torch.randn(rows, H)
    dz = torch.randn(rows, H)
    w = torch.randn(H, H)
    head_w, dlogits = torch.randn(V, H), torch.randn(rows, V)

    def run():
        for _ in range(L - 1):
            torch.mm(h, w.t())  # layer l+1's input
            torch.mm(dz, w)  # its gradient w.r.t. h^l
            torch.mm(dz.t(), h)  # dL/dW_xh
        for _ in range(L):
            torch.mm(dz.t(), h)  # dL/dW_hh
        torch.mm(h, head_w.t())  # head forward
        torch.mm(dlogits, head_w)  # head backward: input
        torch.mm(dlogits.t(), h)  # head backward: weights

    return timed(run)


def compiled_share(L: int, H: int, B: int = 64, T: int = 128, V: int = 65, steps: int = 20) -> dict:
    """One whole training step (bench_train's Trainer, --precision fp32) and the part of it spent in the compiled
    recurrence (charrnn/model/compiled.py), timed in the same steps; and the useful FLOP/s a step would reach if that part
    ran at `peak` while the rest (torch's products, the head, the loss, AdamW, the clip) stayed as measured."""
    from bench_train import Trainer, make_charrnn, useful_flops_per_char
    from charrnn.model import compiled

    real, spent = compiled.recurrence, [0.0]

    def timed_recurrence(*args, **kwargs):
        t0 = time.perf_counter()
        real(*args, **kwargs)
        spent[0] += time.perf_counter() - t0

    compiled.recurrence = timed_recurrence
    try:
        trainer = Trainer(make_charrnn(V, H, L, precision="fp32"), V, B, T)
        for _ in range(3):
            trainer.step()
        spent[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        step = (time.perf_counter() - t0) / steps
    finally:
        compiled.recurrence = real
    recurrence = spent[0] / steps
    return {"step": step, "recurrence": recurrence, "recurrent_flops": 4.0 * L * T * B * H * H,
            "useful_flops": useful_flops_per_char(H, L, V) * B * T}


def main() -> None:
    B, T, V = 64, 128, 65
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for spec in sys.argv[1:] or ["2x128"]:
        L, H = map(int, spec.split("x"))
        chars = B * T
        rec32 = recurrent_products(L, T, B, H, torch.float32)
        rec16 = recurrent_products(L, T, B, H, torch.bfloat16) if H >= 256 else None
        big = big_products(L, T, B, H, V)
        kernel = kernel_recurrence(L, T, B, H)
        inputs = stack_products(L, T, B, H, absorbable_only=True)
        in_stack = stack_products(L, T, B, H)
        wave = wavefront_products(L, T, B, H) if L > 1 else None
        rates, _, _ = compare(H, L, V=V, B=B, T=T, round_seconds=1.0)  # charrnn and stock nn.RNN, interleaved
        step_ours, step_stock = chars / rates["charrnn"], chars / rates["nn.RNN"]
        per_product = rec32 / (2 * L * (T - 1))
        flops = 2 * B * H * H / per_product
        print(f"{spec} B{B} T{T}: per-step products {rec32 * 1e3:.1f} ms fp32 ({per_product * 1e6:.1f} us each, "
              f"{flops / 1e9:.0f} GFLOP/s)" + (f", {rec16 * 1e3:.1f} ms bf16" if rec16 else "")
              + f"; big products {big * 1e3:.1f} ms fp32; floor (sum, fp32) {(rec32 + big) * 1e3:.1f} ms")
        rest = kernel - rec32 - in_stack
        print(f"  the fused stack alone (torch loop, serial, forward + backward): {kernel * 1e3:.1f} ms: per-step products "
              f"{rec32 * 1e3:.1f} ms, whole-batch products {in_stack * 1e3:.1f} ms, the rest (elementwise work, "
              f"dispatch, Python) {rest * 1e3:.1f} ms ({100 * rest / kernel:.0f} %)")
        if wave is not None:
            print(f"  wavefront route: its products alone {wave * 1e3:.1f} ms, against {(rec32 + inputs) * 1e3:.1f} ms for "
                  f"the per-step products plus the input products it would absorb ({inputs * 1e3:.1f} ms)")
        from bench_train import sgemm_peak
        from charrnn.model import compiled

        if compiled.available():
            c = compiled_share(L, H, B, T, V)
            peak = max(sgemm_peak() for _ in range(3))
            ideal = c["step"] - c["recurrence"] + c["recurrent_flops"] / peak
            print(f"  compiled route: a step {c['step'] * 1e3:.1f} ms ({c['useful_flops'] / c['step'] / peak:.2f} of "
                  f"the sgemm peak, {peak / 1e9:.0f} GFLOP/s), of which the compiled recurrence {c['recurrence'] * 1e3:.1f}"
                  f" ms ({c['recurrent_flops'] / c['recurrence'] / 1e9:.0f} GFLOP/s); with the recurrence at the peak "
                  f"and the rest as it is: {c['useful_flops'] / ideal / peak:.2f} of the peak")
        print(f"  whole step: charrnn {step_ours * 1e3:.1f} ms ({chars / step_ours:,.0f} chars/s), stock nn.RNN "
              f"{step_stock * 1e3:.1f} ms ({chars / step_stock:,.0f} chars/s), ratio {step_stock / step_ours:.2f}x; "
              f"2.0x would need {step_stock / 2 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
