"""GRU and LSTM training speed on CPU: charrnn's model in fp32 against bf16 autocast, interleaved in one process.

    python benchmarks/gated_speed.py                     # 2x512, B32, T128 (charrnn's defaults)
    python benchmarks/gated_speed.py --hidden-size 256 --batch-size 64

This is what `--precision auto` chooses between for `--cell gru|lstm` on a CPU with bf16 instructions. Each
configuration runs a warm-up step, then `--repeats` rounds of `--steps` steps each, fp32 and bf16 alternating
(A B A B ...); the best round of each is printed in chars/s. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.model.network import CharRNN  # noqa: E402
from charrnn.model.precision import cpu_supports_bf16  # noqa: E402
from charrnn.training.launch import make_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not cpu_supports_bf16():
        raise SystemExit("this CPU has no bf16 instructions: --precision auto keeps GRU/LSTM in fp32 here")
    B, T, V = args.batch_size, args.seq_len, args.vocab_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.num_layers}x{args.hidden_size}, "
          f"B{B} T{T}", file=sys.stderr)
    for cell in ("gru", "lstm"):
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=V, cell=cell, hidden_size=args.hidden_size,
                                    num_layers=args.num_layers, dropout=0.0))
        optimizer = make_optimizer(model, 1e-3, (0.9, 0.99), 0.01)
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

        def step(bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, loss, _ = model(x, None, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

        best = {False: 0.0, True: 0.0}
        for bf16 in best:
            step(bf16)  # warm-up
        for _ in range(args.repeats):
            for bf16 in best:
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(bf16)
                best[bf16] = max(best[bf16], B * T * args.steps / (time.perf_counter() - start))
        print(f"{cell}: fp32 {best[False]:,.0f} chars/s, bf16 autocast {best[True]:,.0f} chars/s, "
              f"ratio {best[True] / best[False]:.2f}x")


if __name__ == "__main__":
    main()
