"""charrnn's benchmark suite (run by hand; not collected by pytest). Prints a table and writes JSON.

    python benchmarks/run.py            # full run (about 10 minutes on 2 cores, plus the 1 GB corpus)
    python benchmarks/run.py --quick    # fewer rounds, a 64 MB corpus
    python benchmarks/run.py --precision fp32   # the fp32 route on any CPU (what a CPU without bf16 runs)
    python benchmarks/run.py --emulate avx512-no-bf16 --only train,cli   # an AVX-512 CPU without bf16, on a
                                                                          # bf16 CPU (see below)

--emulate KIND re-runs this script with every library held to that kind of CPU, set before torch and numba load:

    avx512-no-bf16 (Skylake-SP, Cascade Lake, Ice Lake: most cloud VMs of the last years):
        ONEDNN_MAX_CPU_ISA=AVX512_CORE     oneDNN (torch's bf16 products) without avx512_bf16/AMX: it would emulate
                                           bf16, so `--precision auto` picks fp32 (charrnn/model/precision.py)
        ATEN_CPU_CAPABILITY=avx512         torch's own vectorized kernels (avx512 is the highest it has)
        MKL_ENABLE_INSTRUCTIONS=AVX512     MKL's sgemm (fp32 only, so no bf16 either way)
        NUMBA_CPU_NAME=skylake-avx512 NUMBA_CPU_FEATURES=   the compiled loop, for that CPU's own features
    avx2: the same with AVX2, avx2, AVX2 and haswell.

The run prints what each library then reports (oneDNN's ISA and the implementation its bf16 product takes, ATen's
capability, numba's target, charrnn's bf16 answer), so the emulation is checked, not assumed. MKL_ENABLE_INSTRUCTIONS
cannot be read back (MKL_VERBOSE does not name the code path, and torch does not export MKL's query).

Each training and sampling row carries the machine's sgemm peak (the best 2048^3 fp32 GEMM rate measured at
several points of the same run: a shared VM's peak moves from minute to minute), the fraction of it reached, and
the route that ran. Contenders the hardware cannot run natively (bf16 autocast on a CPU without bf16
instructions, where torch emulates it hundreds of times slower) are skipped and marked so.

Training speeds are medians of charrnn and stock nn.RNN runs interleaved in one process (A B A B ...), so that
load from other processes hits both alike; the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402

from bench_train import StockRNN, compare, make_charrnn, sgemm_peak, useful_flops_per_char  # noqa: E402
from about import about, torch_machine  # noqa: E402  (machine, date, commit: every result file carries them)
from floor import big_products, recurrent_products  # noqa: E402

V = 65  # tiny-shakespeare's vocabulary

# --emulate: the environment that holds oneDNN, ATen, MKL and numba to a kind of CPU (see the docstring)
EMULATIONS = {
    "avx512-no-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
                       "MKL_ENABLE_INSTRUCTIONS": "AVX512", "NUMBA_CPU_NAME": "skylake-avx512",
                       "NUMBA_CPU_FEATURES": ""},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""},
}


def emulate(kind: str) -> None:
    """Re-run this script under EMULATIONS[kind] (the variables must be set before torch and numba load), unless
    this process already runs under them."""
    env = EMULATIONS[kind]
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], {**os.environ, **env})


ISA_PROBE = """
import json, sys, torch, numba
from numba.core.registry import cpu_target
from charrnn.model.precision import cpu_bf16_status
a = torch.randn(64, 256, dtype=torch.bfloat16)
torch.mm(a, torch.randn(256, 256, dtype=torch.bfloat16))
sys.stderr.flush()
codegen = cpu_target.target_context.codegen()
features = codegen._get_host_cpu_features()
print(json.dumps({"aten_capability": torch.backends.cpu.get_cpu_capability(),
                  "numba_cpu": codegen._get_host_cpu_name(),
                  "numba_avx512bf16": "+avx512bf16" in features.split(","),
                  "charrnn_bf16": cpu_bf16_status()}))
"""


def isa_report() -> dict:
    """What each library runs with in this environment (a child process, since oneDNN reports its ISA only in its
    verbose log): oneDNN's ISA and the implementation a bf16 product takes (emulated: "gemm:jit:bf16"; native:
    e.g. "brg_matmul:avx512_core_bf16"), ATen's capability, numba's target CPU and whether it may use avx512_bf16,
    and charrnn's bf16 answer with its reason."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", ISA_PROBE], env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        fields = line.split(",")
        if ",info,cpu,isa:" in line:
            out["onednn_isa"] = line.split("isa:", 1)[1]
        elif ",primitive,exec,cpu,matmul," in line and "bf16" in line:
            out["onednn_bf16_matmul"] = fields[fields.index("matmul") + 1]
    out["env"] = {k: os.environ[k] for k in sorted(set().union(*EMULATIONS.values())) if k in os.environ}
    return out


class Peak:
    """The machine's sgemm peak: the best of measurements spread through the run."""

    def __init__(self):
        self.samples: list[float] = []

    def measure(self) -> float:
        self.samples.append(sgemm_peak() / 1e9)
        return self.samples[-1]

    @property
    def best(self) -> float:
        return max(self.samples)


def pipeline_workers(model) -> int:
    """The layer pipeline's threads for this model on CPU (1: serial, on torch's intra-op threads)."""
    from charrnn.model.fused import choose_workers

    return choose_workers("cpu", model.config.num_layers, model.config.hidden_size)


def route(model) -> str:
    """Which code path trains this model: the kernel, the products' dtype and the CPU threads of the pipeline."""
    plan = model.plan
    if plan.kernel != "fused":
        return f"torch kernel, {plan.core}"
    from charrnn.model import compiled

    if plan.fused_dtype is None and model.jit is not False and compiled.available():
        return "fused fp32, compiled loop (numba)"
    workers = pipeline_workers(model)
    how = f"{workers}-thread layer pipeline" if workers > 1 else "serial"
    return f"fused {plan.fused_dtype or 'fp32'}, {how}"


def per_step_product_gflops(B: int, H: int, rounds: int = 2000) -> float:
    """One B x H by H x H product (sampling's per-step product for B streams) alone, in a bare loop."""
    a, w, out = torch.randn(B, H), torch.randn(H, H), torch.empty(B, H)
    for _ in range(50):
        torch.mm(a, w, out=out)
    t0 = time.perf_counter()
    for _ in range(rounds):
        torch.mm(a, w, out=out)
    return 2.0 * B * H * H * rounds / (time.perf_counter() - t0) / 1e9


def products_floor_gflops(L: int, H: int, workers: int, B: int = 64, T: int = 128) -> float:
    """The useful FLOP/s a training step would reach if it were nothing but its matrix products, each at the rate
    torch runs it alone (benchmarks/floor.py): the L*T per-step recurrent products forward and backward (on one
    thread each, `workers` at a time, where the layer pipeline runs) plus the big products over all T*B rows."""
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        recurrent = recurrent_products(L, T, B, H, torch.float32) / workers
    finally:
        torch.set_num_threads(threads)
    return useful_flops_per_char(H, L, V) * B * T / (recurrent + big_products(L, T, B, H, V)) / 1e9


def bench_training(quick: bool, peak: Peak, precision: str) -> list[dict]:
    from charrnn.model.precision import cpu_supports_bf16

    native_bf16 = cpu_supports_bf16()
    rows = []
    for L, H in ((2, 128), (2, 512), (3, 1024)):
        torch.manual_seed(0)
        # "charrnn" is what `charrnn train --precision PRECISION` runs on this machine (auto: bf16 products on a
        # CPU with bf16 instructions at H >= 256); the fp32 kernel and stock nn.RNN under bf16 autocast are shown
        # beside it where they differ and run natively, so the gain from the kernel and from bf16 can be told apart
        contenders = {"charrnn": make_charrnn(V, H, L, precision=precision)}
        if contenders["charrnn"].compute_dtype is not None:
            contenders["charrnn fp32"] = make_charrnn(V, H, L, precision="fp32")
        contenders["nn.RNN"] = StockRNN(V, H, L)
        if native_bf16:
            contenders["nn.RNN bf16"] = StockRNN(V, H, L, autocast=True)
        med, raw, steps = compare(H, L, V=V, rounds=3 if quick else 7, round_seconds=1.0 if quick else 2.5,
                                  contenders=contenders)
        peak.measure()
        flops = med["charrnn"] * useful_flops_per_char(H, L, V)
        floor = products_floor_gflops(L, H, pipeline_workers(contenders["charrnn"]))
        rows.append({
            "model": f"{L}x{H}", "B": 64, "T": 128, "steps_per_round": steps, "route": route(contenders["charrnn"]),
            "plan": contenders["charrnn"].plan.describe(),
            "charrnn_precision": "bf16" if contenders["charrnn"].compute_dtype is not None else "fp32",
            "charrnn_chars_per_s": med["charrnn"],
            "charrnn_fp32_chars_per_s": med.get("charrnn fp32", med["charrnn"]),
            "nn_rnn_chars_per_s": med["nn.RNN"], "nn_rnn_bf16_autocast_chars_per_s": med.get("nn.RNN bf16"),
            "ratio": med["charrnn"] / med["nn.RNN"], "charrnn_gflops": flops / 1e9,
            "products_floor_gflops": floor, "rounds": raw, "loadavg": os.getloadavg(),
        })
        print(f"  train {L}x{H} ({rows[-1]['route']}): " + "  ".join(f"{k} {v:,.0f}" for k, v in med.items())
              + f" chars/s ({rows[-1]['ratio']:.2f}x stock, {flops / 1e9:.0f} GFLOP/s; its products alone "
              f"{floor:.0f} GFLOP/s; sgemm now {peak.samples[-1]:.0f})", flush=True)
    return rows


def _model(H, L):
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=V, hidden_size=H, num_layers=L)).eval()


def bench_sampling(quick: bool, peak: Peak) -> dict:
    from charrnn.data.vocab import Vocab
    from charrnn.inference.sampling import generate

    H, L = 512, 2
    model = _model(H, L)
    vocab = Vocab("".join(chr(32 + i) for i in range(V - 1)) + "\n")
    flops_per_char = 2.0 * ((2 * L - 1) * H * H + H * V)  # forward products only
    weight_bytes = 4.0 * ((2 * L - 1) * H * H + H * V)  # fp32 weights read once per step
    out = {}
    for streams in (1, 16):
        length = 2000 if quick else 5000
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _chars in generate(model, vocab, length, seed=1, num_samples=streams):
                pass
            rates.append(length * streams / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        peak.measure()
        out[f"{streams}_streams"] = {
            "chars_per_s": rate, "gflops": rate * flops_per_char / 1e9,
            "weights_gb_per_s": rate / streams * weight_bytes / 1e9,
            "product_alone_gflops": per_step_product_gflops(streams, H),
            "route": "numpy (single-threaded BLAS gemv)" if streams == 1 else multi_stream_route(),
        }
        print(f"  sample 2x512, {streams} stream(s): {rate:,.0f} chars/s, {out[f'{streams}_streams']['gflops']:.1f} "
              f"GFLOP/s, weights read at {out[f'{streams}_streams']['weights_gb_per_s']:.1f} GB/s", flush=True)
    return out


# tiny-shakespeare's 65 characters: the CLI's corpus has the vocabulary the in-process loop's models have (V = 65)
ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write_corpus(path: str, chars: int = 2_000_000) -> None:
    """A seeded pseudo-text over ALPHABET (every character present): what it says does not change a step's time."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice(ALPHABET[13:]) for _ in range(rng.randint(1, 9))) for _ in range(5000)]
    out, size = [ALPHABET], len(ALPHABET)
    while size < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice(ALPHABET[1:13]) + "\n"
        out.append(line)
        size += len(line)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(out)[:chars])


def charrnn_cli(*args: str, stdout=subprocess.DEVNULL) -> tuple[float, str]:
    """Run `python -m charrnn ARGS` as a user would; (wall seconds, its stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, stdout=stdout, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"charrnn {' '.join(args)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stderr


def bench_cli(quick: bool, precision: str, loop_rows: list, loop_sample: dict, H: int = 128, B: int = 64,
              T: int = 128, sample_hidden: int = 512, steps: Optional[int] = None,
              lengths: Optional[tuple] = None) -> dict:
    """What users run, beside what the loops above measure: `charrnn train` at 2x128 B64 T128 (its time per step
    from the run's own metrics: the elapsed time between its step-10 and last rows, so start-up and the final
    evaluation are left out) and `charrnn sample --num-samples 16` at 2x512 (the difference of a long and a short
    run, so start-up is left out; the long run's whole wall time is recorded too). Each against the in-process
    loop's rate of the same model from this run (train 2x128's "charrnn" row, sample's 16 streams)."""
    tmp = tempfile.mkdtemp(prefix="charrnn-bench-cli-", dir="/tmp")
    corpus = os.path.join(tmp, "corpus.txt")
    write_corpus(corpus)
    out: dict = {}
    try:
        steps = steps or (60 if quick else 110)
        rates, routes = [], set()
        for r in range(2 if quick else 3):
            run_dir = os.path.join(tmp, f"train{r}")
            wall, err = charrnn_cli("train", corpus, "--hidden-size", str(H), "--num-layers", "2", "--batch-size",
                                    str(B), "--seq-len", str(T), "--dropout", "0", "--precision", precision,
                                    "--max-steps", str(steps), "--eval-every", str(10 * steps), "--sample-every",
                                    "0", "--run-dir", run_dir)
            routes.update(line.split("precision:", 1)[1].strip() for line in err.splitlines() if "precision:" in line)
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                rows = {row["step"]: row for row in map(json.loads, f) if "loss" in row}
            first, last = rows[10], rows[max(rows)]
            rates.append((last["step"] - 10) * B * T / (last["elapsed"] - first["elapsed"]))
        loop = next((row for row in loop_rows if row["model"] == f"2x{H}" and (B, T) == (64, 128)), None)
        out["train_2x128"] = {"chars_per_s": statistics.median(rates), "rounds": rates, "steps": steps,
                              "route": sorted(routes),
                              "loop_chars_per_s": loop["charrnn_chars_per_s"] if loop else None}
        if loop:
            out["train_2x128"]["loop_over_cli"] = loop["charrnn_chars_per_s"] / out["train_2x128"]["chars_per_s"]
        # a 2x512 checkpoint over the same 65 characters (one step: its weights do not change the sampling speed)
        ckpt = os.path.join(tmp, "sample-model")
        charrnn_cli("train", corpus, "--hidden-size", str(sample_hidden), "--num-layers", "2", "--batch-size", "4",
                    "--seq-len", "16", "--max-steps", "1", "--val-frac", "0.001", "--sample-every", "0", "--run-dir",
                    ckpt, "-q")
        # long enough that start-up's variation (seconds) is small beside the generation measured
        short, long_ = lengths or (200, 20000)
        walls = {short: [], long_: []}
        for _ in range(3):
            for length in (short, long_):
                walls[length].append(charrnn_cli("sample", ckpt, "--num-samples", "16", "--length", str(length),
                                                 "--seed", "1")[0])
        rate = 16 * (long_ - short) / (statistics.median(walls[long_]) - statistics.median(walls[short]))
        loop16 = loop_sample.get("16_streams", {}).get("chars_per_s") if sample_hidden == 512 else None
        out["sample_2x512_16"] = {"chars_per_s": rate, "walls": {str(k): v for k, v in walls.items()},
                                  "whole_command_chars_per_s": 16 * long_ / statistics.median(walls[long_]),
                                  "route": [multi_stream_route()],
                                  "loop_chars_per_s": loop16}
        if loop16:
            out["sample_2x512_16"]["loop_over_cli"] = loop16 / rate
        t, sm = out["train_2x128"], out["sample_2x512_16"]
        print(f"  cli train 2x{H} B{B} T{T} ({'; '.join(t['route'])}): {t['chars_per_s']:,.0f} chars/s"
              + (f"; in-process loop {t['loop_chars_per_s']:,.0f}: loop/CLI {t['loop_over_cli']:.2f}x" if loop else
                 " (run with train for the loop's rate)"), flush=True)
        print(f"  cli sample 2x{sample_hidden} --num-samples 16: {sm['chars_per_s']:,.0f} chars/s without start-up "
              f"({sm['whole_command_chars_per_s']:,.0f} with it, {long_} characters)"
              + (f"; in-process {loop16:,.0f}: loop/CLI {sm['loop_over_cli']:.2f}x" if loop16 else
                 " (run with sample for the loop's rate)"), flush=True)
    finally:
        subprocess.run(["rm", "-rf", tmp])
    return out


def multi_stream_route() -> str:
    from charrnn.model import compiled

    if compiled.available():
        return "all streams in each product; recurrent product + tanh compiled (numba)"
    return "torch, all streams in each product"


def bench_eval(quick: bool) -> dict:
    import numpy as np

    from charrnn.inference.evaluation import score_ids

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
        "import sys, time, json; from charrnn.data.cache import load_ids; t=time.perf_counter();"
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


MINIMAL_TYPER = """
import typer
app = typer.Typer(rich_markup_mode="rich", help="A minimal Typer app with rich help, for comparison.")
@app.command()
def train(corpus: str, steps: int = typer.Option(100, help="Steps.")):
    \"\"\"Train.\"\"\"
@app.command()
def sample(length: int = typer.Option(500, help="Characters.")):
    \"\"\"Sample.\"\"\"
app()
"""


def bench_help() -> dict:
    """Wall time of `charrnn --help` and the commands' --help, against a minimal Typer app with rich help (the
    floor for any Typer CLI), interleaved, medians of 7."""
    commands = {"minimal Typer app --help": [sys.executable, "-c", MINIMAL_TYPER, "--help"],
                "minimal Typer app sample --help": [sys.executable, "-c", MINIMAL_TYPER, "sample", "--help"]}
    for args in (["--help"], ["sample", "--help"], ["eval", "--help"], ["train", "--help"]):
        commands["charrnn " + " ".join(args)] = [sys.executable, "-m", "charrnn", *args]
    times = {name: [] for name in commands}
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="100")
    for _ in range(7):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, env=env)
            times[name].append(time.perf_counter() - t0)
    out = {name: statistics.median(t) for name, t in times.items()}
    for name, t in out.items():
        print(f"  {name}: {t:.3f} s ({t / out[help_baseline(name)]:.2f}x the minimal app's)", flush=True)
    return out


def help_baseline(name: str) -> str:
    """The minimal app's help at the same level: top-level help (`charrnn --help`) or a command's."""
    return "minimal Typer app " + ("--help" if name.split()[-2] in ("charrnn", "app") else "sample --help")


def main() -> None:
    from charrnn.model.precision import cpu_supports_bf16
    from charrnn.training.allocator import keep_freed_memory

    # the loops run with the malloc thresholds that `charrnn train` sets before its steps (charrnn/training/
    # allocator.py), so that the loop and the command compare alike, whatever this process freed before
    keep_freed_memory()

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a 64 MB corpus")
    ap.add_argument("--corpus-mb", type=int, default=None, help="size of the generated corpus (default 1024)")
    ap.add_argument("--only", default="train,sample,cli,eval,corpus,help",
                    help="comma-separated parts to run (cli: `charrnn train` and `charrnn sample` as commands, beside "
                    "the train and sample loops' rates)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32"),
                    help="charrnn's --precision for the training rows (fp32: the route of a CPU without bf16)")
    ap.add_argument("--emulate", choices=sorted(EMULATIONS), default=None,
                    help="hold oneDNN, ATen, MKL and numba to this kind of CPU (see above)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the JSON")
    args = ap.parse_args()
    if args.emulate:
        emulate(args.emulate)  # returns only once running under its variables
    parts = set(args.only.split(","))
    result = {"about": about(benchmark="run"), "machine": torch_machine(), "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "precision": args.precision, "native_bf16": cpu_supports_bf16(), "emulate": args.emulate,
              "isa": isa_report()}
    print(f"machine: {result['machine']}  native bf16: {result['native_bf16']}  load average "
          f"{result['loadavg_start']}", flush=True)
    print(f"emulating: {args.emulate or 'no (this CPU as it is)'}; what the libraries report: {result['isa']}",
          flush=True)
    peak = Peak()
    if parts & {"train", "sample"}:
        print(f"  sgemm 2048^3: {peak.measure():.1f} GFLOP/s", flush=True)
        if result["native_bf16"]:
            result["bf16_gemm_peak_gflops"] = sgemm_peak(dtype=torch.bfloat16) / 1e9
    if "train" in parts:
        result["train"] = bench_training(args.quick, peak, args.precision)
    if "sample" in parts:
        result["sample"] = bench_sampling(args.quick, peak)
    if peak.samples:
        print(f"  sgemm 2048^3: {peak.measure():.1f} GFLOP/s", flush=True)
        result["sgemm_gflops_samples"], result["sgemm_peak_gflops"] = peak.samples, peak.best
    if "cli" in parts:
        result["cli"] = bench_cli(args.quick, args.precision, result.get("train", []), result.get("sample", {}))
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
    peak = r.get("sgemm_peak_gflops")
    lines = ["| what | route | charrnn | stock nn.RNN | ratio | sgemm peak (GFLOP/s) | useful GFLOP/s (fraction of "
             "peak) | bound: its products alone in torch (fraction of peak) | stock nn.RNN, bf16 autocast |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r.get("train", []):
        stock_bf16 = row.get("nn_rnn_bf16_autocast_chars_per_s")
        lines.append(f"| train {row['model']} B64 T128 (chars/s) | {row['route']} | {row['charrnn_chars_per_s']:,.0f} "
                     f"| {row['nn_rnn_chars_per_s']:,.0f} | {row['ratio']:.2f}x | {peak:.0f} | "
                     f"{row['charrnn_gflops']:.1f} ({row['charrnn_gflops'] / peak:.2f}) | "
                     f"{row['products_floor_gflops']:.0f} ({row['products_floor_gflops'] / peak:.2f}) | "
                     + (f"{stock_bf16:,.0f} |" if stock_bf16 else "skipped: no native bf16 (emulated) |"))
    for streams, row in r.get("sample", {}).items():
        n = streams.split("_")[0]
        lines.append(f"| sample 2x512, {n} stream(s) (chars/s, all streams) | {row['route']} | "
                     f"{row['chars_per_s']:,.0f} | | | {peak:.0f} | {row['gflops']:.1f} ({row['gflops'] / peak:.2f}); "
                     f"weights read at {row['weights_gb_per_s']:.1f} GB/s | {row['product_alone_gflops']:.0f} "
                     f"({row['product_alone_gflops'] / peak:.2f}) | |")
    cli = r.get("cli", {})
    for key, what in (("train_2x128", "`charrnn train` 2x128 B64 T128 (chars/s, from its metrics)"),
                      ("sample_2x512_16", "`charrnn sample --num-samples 16` 2x512 (chars/s, start-up excluded)")):
        row = cli.get(key)
        if row:
            ratio = f"in-process loop {row['loop_chars_per_s']:,.0f}: loop/CLI {row['loop_over_cli']:.2f}x" if \
                row.get("loop_over_cli") else "no loop rate in this run"
            lines.append(f"| {what} | {'; '.join(row.get('route', []))} | {row['chars_per_s']:,.0f} | | | | {ratio} "
                         f"| | |")
    for k, v in r.get("eval", {}).items():
        lines.append(f"| eval 2x512, {k.split('_')[1]} stream(s) (chars/s) | | {v:,.0f} | | | | | | |")
    if "corpus" in r:
        c = r["corpus"]
        lines.append(f"| encode {c['corpus_mb']:.0f} MB corpus | | {c['encode_mb_per_s']:.0f} MB/s, peak RSS "
                     f"{c['encode_peak_rss_mb']:.0f} MB | | | | | | |")
        lines.append(f"| same corpus, cache hit (hash only) | | {c['cache_hit_mb_per_s']:.0f} MB/s, peak RSS "
                     f"{c['cache_hit_peak_rss_mb']:.0f} MB | | | | | | |")
        lines.append(f"| train 20 steps 2x128 from it | | peak RSS {c['train_peak_rss_mb']:.0f} MB | | | | | | |")
    help_times = r.get("help_seconds", {})
    for k, v in help_times.items():
        lines.append(f"| `{k}` wall time | | {v:.2f} s ({v / help_times[help_baseline(k)]:.2f}x "
                     f"`{help_baseline(k)}`) | | | | | | |")
    if peak:
        lines.append(f"\nsgemm 2048^3 measured {len(r['sgemm_gflops_samples'])} times through the run: "
                     + ", ".join(f"{x:.0f}" for x in r["sgemm_gflops_samples"]) + " GFLOP/s (peak: the best)"
                     + (f"; bf16 GEMM 2048^3: {r['bf16_gemm_peak_gflops']:.0f} GFLOP/s"
                        if "bf16_gemm_peak_gflops" in r else "; no native bf16"))
    lines.append(f"load average (1, 5, 15 min): start {tuple(round(x, 2) for x in r['loadavg_start'])}, "
                 f"end {tuple(round(x, 2) for x in r['loadavg_end'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
