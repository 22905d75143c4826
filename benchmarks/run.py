"""charrnn's benchmark suite (run by hand; not collected by pytest). Prints a table and writes JSON.

    python benchmarks/run.py            # full run (about 10 minutes on 2 cores, plus the 1 GB corpus)
    python benchmarks/run.py --quick    # fewer rounds, a 64 MB corpus

Training speeds are medians of charrnn and stock nn.RNN runs interleaved in one process (A B A B ...), so that
load from other processes hits both alike; the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402

from bench_train import StockRNN, compare, make_charrnn, sgemm_peak, useful_flops_per_char  # noqa: E402

V = 65  # tiny-shakespeare's vocabulary


def bench_training(quick: bool, peak: float) -> list[dict]:
    rows = []
    for L, H in ((2, 128), (2, 512), (3, 1024)):
        torch.manual_seed(0)
        # "charrnn" is what `charrnn train` runs by default on this machine (--precision auto: bf16 products on a
        # CPU with bf16 instructions at H >= 256); the fp32 kernel and stock nn.RNN under bf16 autocast are shown
        # beside it, so that the gain from the kernel and the gain from bf16 can be told apart
        contenders = {"charrnn": make_charrnn(V, H, L)}
        if contenders["charrnn"].compute_dtype is not None:
            contenders["charrnn fp32"] = make_charrnn(V, H, L, precision="fp32")
        contenders["nn.RNN"] = StockRNN(V, H, L)
        contenders["nn.RNN bf16"] = StockRNN(V, H, L, autocast=True)
        med, raw, steps = compare(H, L, V=V, rounds=3 if quick else 7, round_seconds=1.0 if quick else 2.5,
                                  contenders=contenders)
        flops = med["charrnn"] * useful_flops_per_char(H, L, V)
        rows.append({
            "model": f"{L}x{H}", "B": 64, "T": 128, "steps_per_round": steps,
            "charrnn_precision": "bf16" if contenders["charrnn"].compute_dtype is not None else "fp32",
            "charrnn_chars_per_s": med["charrnn"],
            "charrnn_fp32_chars_per_s": med.get("charrnn fp32", med["charrnn"]),
            "nn_rnn_chars_per_s": med["nn.RNN"], "nn_rnn_bf16_autocast_chars_per_s": med["nn.RNN bf16"],
            "ratio": med["charrnn"] / med["nn.RNN"], "ratio_vs_nn_rnn_bf16": med["charrnn"] / med["nn.RNN bf16"],
            "charrnn_gflops": flops / 1e9, "fraction_of_sgemm_peak": flops / peak, "rounds": raw,
            "loadavg": os.getloadavg(),
        })
        print(f"  train {L}x{H}: " + "  ".join(f"{k} {v:,.0f}" for k, v in med.items()) + " chars/s  "
              f"({rows[-1]['ratio']:.2f}x stock, {rows[-1]['fraction_of_sgemm_peak']:.2f} of sgemm peak)", flush=True)
    return rows


def _model(H, L):
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN

    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=V, hidden_size=H, num_layers=L)).eval()


def bench_sampling(quick: bool) -> dict:
    from charrnn.data import Vocab
    from charrnn.sample import generate

    model = _model(512, 2)
    vocab = Vocab("".join(chr(32 + i) for i in range(V - 1)) + "\n")
    out = {}
    for streams in (1, 16):
        length = 2000 if quick else 5000
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _chars in generate(model, vocab, length, seed=1, num_samples=streams):
                pass
            rates.append(length * streams / (time.perf_counter() - t0))
        out[f"{streams}_streams_chars_per_s"] = statistics.median(rates)
        print(f"  sample 2x512, {streams} stream(s): {out[f'{streams}_streams_chars_per_s']:,.0f} chars/s", flush=True)
    return out


def bench_eval(quick: bool) -> dict:
    import numpy as np

    from charrnn.evaluate import score_ids

    model = _model(512, 2)
    ids = np.random.default_rng(0).integers(0, V, 200_000 if not quick else 60_000).astype(np.uint8)
    out = {}
    for streams in (1, 64):
        n = len(ids) if streams > 1 else len(ids) // 10  # one stream steps a B=1 matrix-vector per char: slow
        t0 = time.perf_counter()
        score_ids(model, ids[:n], streams=streams, chunk=128)
        out[f"streams_{streams}_chars_per_s"] = (n - 1) / (time.perf_counter() - t0)
        print(f"  eval 2x512, {streams} stream(s): {out[f'streams_{streams}_chars_per_s']:,.0f} chars/s", flush=True)
    return out


_BLOCK = ("First Citizen:\nBefore we proceed any further, hear me speak.\n"
          "Ünïcödé — “quotes”, 中文字符, emoji 😀, z\u0301 combining.\r\n")


def bench_corpus(size_mb: int) -> dict:
    """Write a size_mb corpus in /tmp, encode it into a fresh cache (a child process, for its peak RSS), then
    train a few steps from it (peak RSS again), and time the cache hit; delete everything afterwards."""
    tmp = tempfile.mkdtemp(prefix="charrnn-bench-", dir="/tmp")
    corpus = os.path.join(tmp, "big.txt")
    block = (_BLOCK * 2000).encode("utf-8")
    with open(corpus, "wb") as f:
        written = 0
        while written < size_mb * 1024 * 1024:
            f.write(block)
            written += len(block)
    env = dict(os.environ, CHARRNN_CACHE_DIR=os.path.join(tmp, "cache"), PYTHONPATH=ROOT)
    # peak RSS from VmHWM: getrusage's ru_maxrss of a child carries over the parent's peak across exec on Linux
    hwm = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])/1024"
    probe = (
        "import sys, time, json; from charrnn.data import load_ids; t=time.perf_counter();"
        "c=load_ids(sys.argv[1], progress=False); dt=time.perf_counter()-t;"
        "print(json.dumps({'seconds': dt, 'chars': c.chars, 'vocab': len(c.vocab),"
        f"'peak_rss_mb': {hwm}}}))"
    )
    out = {"corpus_mb": written / 2**20}
    try:
        for label in ("encode", "cache_hit"):
            proc = subprocess.run([sys.executable, "-c", probe, corpus], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(proc.stderr)
            r = json.loads(proc.stdout)
            out[f"{label}_seconds"], out[f"{label}_peak_rss_mb"] = r["seconds"], r["peak_rss_mb"]
            out[f"{label}_mb_per_s"] = out["corpus_mb"] / r["seconds"]
            print(f"  corpus {out['corpus_mb']:.0f} MB {label}: {out[f'{label}_mb_per_s']:.0f} MB/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        train = (
            "import sys, charrnn; from charrnn.config import ModelConfig, TrainConfig;"
            "charrnn.train(sys.argv[1], ModelConfig(hidden_size=128), TrainConfig(max_steps=20, val_frac=0,"
            " test_frac=0, eval_every=1000), run_dir=sys.argv[2], progress=False);"
            f"print({hwm})"
        )
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", train, corpus, os.path.join(tmp, "run")], env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        out["train_20_steps_seconds"] = time.perf_counter() - t0
        out["train_peak_rss_mb"] = float(proc.stdout.strip().splitlines()[-1])
        print(f"  train 20 steps 2x128 on it (cache hit): peak RSS {out['train_peak_rss_mb']:.0f} MB", flush=True)
    finally:
        subprocess.run(["rm", "-rf", tmp])
    return out


def bench_help() -> dict:
    out = {}
    for args in (["--help"], ["sample", "--help"]):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, check=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
            times.append(time.perf_counter() - t0)
        out[" ".join(args)] = statistics.median(times)
        print(f"  charrnn {' '.join(args)}: {out[' '.join(args)]:.3f} s", flush=True)
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a 64 MB corpus")
    ap.add_argument("--corpus-mb", type=int, default=None, help="size of the generated corpus (default 1024)")
    ap.add_argument("--only", default="train,sample,eval,corpus,help", help="comma-separated parts to run")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the JSON")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    result = {"machine": machine(), "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {result['machine']}  load average {result['loadavg_start']}", flush=True)
    if "train" in parts:
        result["sgemm_peak_gflops"] = sgemm_peak() / 1e9
        result["bf16_gemm_peak_gflops"] = sgemm_peak(dtype=torch.bfloat16) / 1e9
        print(f"  sgemm 2048^3: {result['sgemm_peak_gflops']:.1f} GFLOP/s; bf16 GEMM 2048^3: "
              f"{result['bf16_gemm_peak_gflops']:.1f} GFLOP/s", flush=True)
        result["train"] = bench_training(args.quick, result["sgemm_peak_gflops"] * 1e9)
        result["sgemm_peak_gflops_after"] = sgemm_peak() / 1e9
        # the peak is the best the machine showed: on a shared VM one measurement can land in a slow moment
        peak = max(result["sgemm_peak_gflops"], result["sgemm_peak_gflops_after"])
        for row in result["train"]:
            row["fraction_of_sgemm_peak"] = row["charrnn_gflops"] / peak
            row["fraction_of_bf16_gemm_peak"] = row["charrnn_gflops"] / result["bf16_gemm_peak_gflops"]
    if "sample" in parts:
        result["sample"] = bench_sampling(args.quick)
    if "eval" in parts:
        result["eval"] = bench_eval(args.quick)
    if "corpus" in parts:
        result["corpus"] = bench_corpus(args.corpus_mb or (64 if args.quick else 1024))
    if "help" in parts:
        result["help_seconds"] = bench_help()
    result["loadavg_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, time.strftime("bench-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(table(result))
    print(f"\nwrote {path}")


def table(r: dict) -> str:
    lines = ["| what | charrnn | stock nn.RNN | ratio | charrnn useful GFLOP/s (of the higher sgemm peak) "
             "| charrnn fp32 kernel | stock nn.RNN, bf16 autocast |", "|---|---|---|---|---|---|---|"]
    for row in r.get("train", []):
        lines.append(f"| train {row['model']} B64 T128 (chars/s) | {row['charrnn_chars_per_s']:,.0f} "
                     f"({row['charrnn_precision']}) | {row['nn_rnn_chars_per_s']:,.0f} | {row['ratio']:.2f}x | "
                     f"{row['charrnn_gflops']:.1f} ({row['fraction_of_sgemm_peak']:.2f}; of bf16 peak "
                     f"{row['fraction_of_bf16_gemm_peak']:.2f}) | "
                     f"{row['charrnn_fp32_chars_per_s']:,.0f} | {row['nn_rnn_bf16_autocast_chars_per_s']:,.0f} |")
    if "sample" in r:
        for k, v in r["sample"].items():
            lines.append(f"| sample 2x512, {k.split('_')[0]} stream(s) (chars/s) | {v:,.0f} | | | |")
    if "eval" in r:
        for k, v in r["eval"].items():
            lines.append(f"| eval 2x512, {k.split('_')[1]} stream(s) (chars/s) | {v:,.0f} | | | |")
    if "corpus" in r:
        c = r["corpus"]
        lines.append(f"| encode {c['corpus_mb']:.0f} MB corpus | {c['encode_mb_per_s']:.0f} MB/s, peak RSS "
                     f"{c['encode_peak_rss_mb']:.0f} MB | | | |")
        lines.append(f"| same corpus, cache hit (hash only) | {c['cache_hit_mb_per_s']:.0f} MB/s, peak RSS "
                     f"{c['cache_hit_peak_rss_mb']:.0f} MB | | | |")
        lines.append(f"| train 20 steps 2x128 from it | peak RSS {c['train_peak_rss_mb']:.0f} MB | | | |")
    for k, v in r.get("help_seconds", {}).items():
        lines.append(f"| `charrnn {k}` wall time | {v:.2f} s | | | |")
    if "sgemm_peak_gflops" in r:
        lines.append(f"\nsgemm 2048^3 peak: {r['sgemm_peak_gflops']:.1f} GFLOP/s before, "
                     f"{r['sgemm_peak_gflops_after']:.1f} after the training runs; bf16 GEMM 2048^3: "
                     f"{r.get('bf16_gemm_peak_gflops', float('nan')):.1f} GFLOP/s")
    lines.append(f"load average (1, 5, 15 min): start {tuple(round(x, 2) for x in r['loadavg_start'])}, "
                 f"end {tuple(round(x, 2) for x in r['loadavg_end'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
