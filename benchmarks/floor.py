"""What bounds a training step of the fused tanh kernel: its matrix products timed alone, against the whole step.

    python benchmarks/floor.py            # 2x128, B64 T128 (the shape where the kernel is furthest from 2x)
    python benchmarks/floor.py 2x512 3x1024

For each shape it times, on this machine and in this process (medians of several rounds):
- the per-step recurrent products alone: L*T forward `addmm_` (B x H by H x H) and L*T backward ones, in a bare
  Python loop over pre-made views, fp32 and (H >= 256) bf16: the work no BPTT can skip or batch;
- the big products over all T*B rows: layer inputs above the first, their gradients, the weight gradients and
  the head (forward and both backward products);
- one whole training step of charrnn (as `charrnn train` sets it up) and of stock nn.RNN (bench_train.py).
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


def main() -> None:
    B, T, V = 64, 128, 65
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for spec in sys.argv[1:] or ["2x128"]:
        L, H = map(int, spec.split("x"))
        chars = B * T
        rec32 = recurrent_products(L, T, B, H, torch.float32)
        rec16 = recurrent_products(L, T, B, H, torch.bfloat16) if H >= 256 else None
        big = big_products(L, T, B, H, V)
        rates, _, _ = compare(H, L, V=V, B=B, T=T, round_seconds=1.0)  # charrnn and stock nn.RNN, interleaved
        step_ours, step_stock = chars / rates["charrnn"], chars / rates["nn.RNN"]
        per_product = rec32 / (2 * L * (T - 1))
        flops = 2 * B * H * H / per_product
        print(f"{spec} B{B} T{T}: per-step products {rec32 * 1e3:.1f} ms fp32 ({per_product * 1e6:.1f} us each, "
              f"{flops / 1e9:.0f} GFLOP/s)" + (f", {rec16 * 1e3:.1f} ms bf16" if rec16 else "")
              + f"; big products {big * 1e3:.1f} ms fp32; floor (sum, fp32) {(rec32 + big) * 1e3:.1f} ms")
        print(f"  whole step: charrnn {step_ours * 1e3:.1f} ms ({chars / step_ours:,.0f} chars/s), stock nn.RNN "
              f"{step_stock * 1e3:.1f} ms ({chars / step_stock:,.0f} chars/s), ratio {step_stock / step_ours:.2f}x; "
              f"2.0x would need {step_stock / 2 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
