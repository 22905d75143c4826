"""The compiled recurrence against the torch loop, in one process (run by hand; not collected by pytest).

    python benchmarks/compiled_ab.py 2x128 2x512 3x1024
    python benchmarks/compiled_ab.py --precision bf16 2x256 2x512   # the bf16 route instead of the torch loop

Trains charrnn's model (`--precision fp32` set-up) with the compiled loop (`model.jit = True`), the same model on
the torch loop (`model.jit = False`, or the bf16 route with --precision bf16) and stock nn.RNN, interleaved
(bench_train.compare), B64 T128; prints chars/s, the fraction of the sgemm peak and the ratio."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import StockRNN, compare, make_charrnn, sgemm_peak, useful_flops_per_char  # noqa: E402

V = 65


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shapes", nargs="+", help="LxH, e.g. 2x512")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the other contender's route")
    args = ap.parse_args()
    peak = max(sgemm_peak() for _ in range(3)) / 1e9
    print(f"sgemm peak {peak:.0f} GFLOP/s, load average {os.getloadavg()[0]:.2f}")
    for spec in args.shapes:
        L, H = map(int, spec.split("x"))
        compiled = make_charrnn(V, H, L, precision="fp32")
        compiled.jit = True
        other = make_charrnn(V, H, L, precision=args.precision)
        other.jit = False
        name = "torch loop" if args.precision == "fp32" else "bf16 route"
        med, _, _ = compare(H, L, contenders={"compiled": compiled, name: other, "nn.RNN": StockRNN(V, H, L)},
                            rounds=3, round_seconds=1.5)
        gflop = useful_flops_per_char(H, L, V) / 1e9
        rates = "  ".join(f"{k} {v:,.0f} chars/s ({v * gflop / peak:.2f})" for k, v in med.items())
        print(f"{spec}: {rates}; compiled / {name} {med['compiled'] / med[name]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
