"""GPU benchmark and check, one command (about 7 minutes on one H100/H200):

    python benchmarks/gpu.py [--corpus tinyshakespeare.txt] [--out DIR] [--skip-tests] [--skip-speed]
                             [--skip-serve] [--skip-quality] [--budget 180] [--quality-extra "--hidden-size 1024" ...]

1. runs `pytest tests/gpu` (each cell and kernel in fp32/bf16/fp16, resume on GPU, a GPU checkpoint sampled and
   evaluated on CPU, torchrun with NCCL; `serve --device cuda` for each cell, seeded requests alone and beside 15
   streams; a GPU-trained model exported to ONNX, safetensors and the web; these need the serve and export extras);
2. times training chars/s on random batches for tanh 2x512 and 3x1024 at B64 and B256, T128: charrnn with cuDNN
   (--kernel nn) and with the fused kernel, in each precision the policy allows, beside stock nn.RNN
   (nn.Embedding -> nn.RNN -> nn.Linear, fp32 and under fp16 autocast with a GradScaler, the stock recipe); GRU and
   LSTM at 2x512 B64; sampling chars/s (`charrnn sample` samples on the CPU: it is the CPU of this machine);
3. measures `charrnn serve --device cuda` under 1, 4, 16 and 64 streaming clients (benchmarks/serve.py, its own
   JSON file in --out);
4. trains `charrnn train CORPUS --val-frac 0.1 --test-frac 0 --time-budget 180` at the defaults (first 90 % train,
   last 10 % validation, as nanoGPT's shakespeare_char: val 1.4697 after about 3 minutes on one A100) and reports
   the best validation loss. --quality-extra adds runs with other options, run at the same time as the defaults
   (the table says so: they share the GPU and may slow each other).

Prints a Markdown table and writes gpu-results.json to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from about import about  # noqa: E402  (benchmarks/about.py: machine, date, commit)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

V = 65  # tiny-shakespeare's vocabulary


class StockRNN(nn.Module):
    """What a user writes with torch's modules: nn.Embedding -> nn.RNN (cuDNN) -> nn.Linear."""

    def __init__(self, H: int, L: int):
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.rnn = nn.RNN(H, H, L, nonlinearity="tanh")
        self.head = nn.Linear(H, V)

    def forward(self, ids, state, targets):
        out, state = self.rnn(self.embed(ids.t()), state)
        logits = self.head(out)
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.t().reshape(-1))
        return logits, loss, state.float()

    def init_state(self, B, device=None):
        return torch.zeros(self.rnn.num_layers, B, self.rnn.hidden_size, device=device)


def time_training(model, B: int, T: int, autocast: str | None, scaler: bool, seconds: float = 1.5) -> float:
    """chars/s of the training step charrnn runs (AdamW, clip, state carried), timed with the GPU synchronised."""
    from charrnn.model.precision import torch_dtype
    from charrnn.training.launch import clip_gradients, make_optimizer

    dev = torch.device("cuda")
    opt = make_optimizer(model, 2e-3, (0.9, 0.99), 0.01)
    gs = torch.amp.GradScaler("cuda") if scaler else None
    data = torch.randint(0, V, (B, T * 4 + 1), device=dev, generator=torch.Generator(dev).manual_seed(0))
    state = model.init_state(B, dev)
    dtype = torch_dtype(autocast)

    def step(k, state):
        x, y = data[:, (k % 4) * T: (k % 4 + 1) * T], data[:, (k % 4) * T + 1: (k % 4 + 1) * T + 1]
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            _, loss, state = model(x, state.detach(), y)
        opt.zero_grad(set_to_none=True)
        (gs.scale(loss) if gs else loss).backward()
        if gs:
            gs.unscale_(opt)
        clip_gradients(model.parameters(), 1.0)
        if gs:
            gs.step(opt)
            gs.update()
        else:
            opt.step()
        return state.float()

    for k in range(3):
        state = step(k, state)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            state = step(n, state)
            n += 1
        torch.cuda.synchronize()
    return B * T * n / (time.perf_counter() - t0)


def speed_table(quick: bool = False) -> list[dict]:
    from bench_train import make_charrnn

    rows = []

    def add(what, H, L, B, precision, build, autocast=None, scaler=False):
        try:
            torch.manual_seed(0)
            model = build()
            if hasattr(model, "plan") and model.plan is not None:
                autocast, scaler, ran = model.plan.autocast, model.plan.grad_scaler, model.plan.describe()
            else:
                ran = precision
            rate = time_training(model, B, 128, autocast, scaler)
            rows.append({"model": f"{L}x{H}", "B": B, "what": what, "precision": precision, "ran": ran,
                         "chars_per_s": round(rate)})
        except Exception as exc:  # one failing contender must not hide the rest of the table
            rows.append({"model": f"{L}x{H}", "B": B, "what": what, "precision": precision,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        torch.cuda.empty_cache()

    for H, L in ((512, 2), (1024, 3)):
        for B in (64, 256):
            for kernel in ("nn",) if quick else ("nn", "fused"):
                for precision in ("fp32",) if quick else ("fp32", "bf16", "fp16"):
                    add(f"charrnn {'cuDNN' if kernel == 'nn' else 'fused'}", H, L, B, precision,
                        lambda: make_charrnn(V, H, L, kernel=kernel, precision=precision, device="cuda"))
            add("stock nn.RNN", H, L, B, "fp32", lambda: StockRNN(H, L).cuda())
            if not quick:
                add("stock nn.RNN", H, L, B, "fp16 autocast", lambda: StockRNN(H, L).cuda(), "fp16", True)
    for cell in () if quick else ("gru", "lstm"):
        for precision in ("fp32", "bf16", "fp16"):
            add(f"charrnn {cell}", 512, 2, 64, precision,
                lambda: make_charrnn(V, 512, 2, precision=precision, device="cuda", cell=cell))
    return rows


def sampling_speed(tmp: str, corpus: str) -> dict:
    """`charrnn sample` chars/s from a 2x512 checkpoint (sampling runs on the CPU)."""
    run = os.path.join(tmp, "sample-run")
    subprocess.run([sys.executable, "-m", "charrnn", "train", corpus, "--max-steps", "5", "--run-dir", run, "-q"],
                   cwd=ROOT, check=True)
    out = {}
    for n in (1, 16):
        proc = subprocess.run([sys.executable, "-c",
                               "import sys,time; from charrnn.inference.sampling import sample; t=time.perf_counter();"
                               f"sample({run!r}, length=4000, num_samples={n}, seed=1);"
                               "print(time.perf_counter()-t)"], cwd=ROOT, capture_output=True, text=True)
        seconds = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else float("nan")
        out[f"streams_{n}"] = round(4000 * n / seconds) if seconds == seconds else proc.stderr[-300:]
    return out


def quality(corpus: str, budget: int, extras: list[str], tmp: str) -> list[dict]:
    """The defaults (and any --quality-extra runs, started together) for `budget` seconds each."""
    procs = []
    for i, extra in enumerate(["", *extras]):
        run = os.path.join(tmp, f"quality-{i}")
        cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--val-frac", "0.1", "--test-frac", "0",
               "--time-budget", str(budget), "--run-dir", run, "-q", *shlex.split(extra)]
        procs.append((extra or "defaults", run, time.time(),
                      subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)))
    rows = []
    for name, run, start, proc in procs:
        _, err = proc.communicate()
        wall = time.time() - start
        if proc.returncode != 0:
            rows.append({"run": name, "error": err[-500:]})
            continue
        metrics = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        vals = [r["val_loss"] for r in metrics if "val_loss" in r]
        from charrnn.store.checkpoint import load_checkpoint

        ckpt = load_checkpoint(os.path.join(run, "latest.pt"))
        rows.append({"run": name, "best_val_nats": round(min(vals), 4), "final_val_nats": round(vals[-1], 4),
                     "steps": max(r["step"] for r in metrics), "wall_s": round(wall, 1),
                     "dropout": ckpt["model_config"]["dropout"], "precision": ckpt.get("precision", {}).get("summary"),
                     "concurrent_runs": len(procs),
                     "val_curve": [[r["step"], round(r["val_loss"], 4)] for r in metrics if "val_loss" in r]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "val_curve"}), file=sys.stderr, flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = [f"GPU: {results['gpu']}; torch {results['torch']}; cuDNN {results['cudnn']}", ""]
    if "tests" in results:
        lines += [f"tests/gpu: {results['tests']['summary']} ({results['tests']['seconds']:.0f} s)", ""]
    if "speed" in results:
        lines += ["| model | B | contender | --precision | what ran | chars/s |", "|---|---|---|---|---|---|"]
        for r in results["speed"]:
            lines.append(f"| {r['model']} | {r['B']} | {r['what']} | {r['precision']} | {r.get('ran', '')} | "
                         f"{r['chars_per_s']:,} |" if "chars_per_s" in r else
                         f"| {r['model']} | {r['B']} | {r['what']} | {r['precision']} | {r['error']} | - |")
        lines.append("")
    if "sampling" in results:
        lines += [f"sampling (`charrnn sample`, on this machine's CPU): {results['sampling']}", ""]
    if "quality" in results:
        lines += ["| run | best val nats/char | final | steps | dropout | concurrent runs |", "|---|---|---|---|---|---|"]
        for r in results["quality"]:
            lines.append(f"| {r['run']} | {r.get('best_val_nats', r.get('error'))} | {r.get('final_val_nats')} | "
                         f"{r.get('steps')} | {r.get('dropout')} | {r.get('concurrent_runs')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--budget", type=int, default=180)
    ap.add_argument("--quality-extra", action="append", default=[])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--quick-speed", action="store_true", help="only charrnn cuDNN fp32 and stock nn.RNN fp32")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    results = {"about": about(gpu=torch.cuda.get_device_name()), "gpu": torch.cuda.get_device_name(),
               "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "host": platform.node(),
               "bf16_supported": torch.cuda.is_bf16_supported()}
    path = os.path.join(args.out, "gpu-results.json")

    def dump():
        with open(path, "w") as f:
            json.dump(results, f, indent=1)

    if not args.skip_tests:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/gpu"], cwd=ROOT,
                              capture_output=True, text=True)
        print(proc.stdout[-6000:], proc.stderr[-2000:], file=sys.stderr)
        results["tests"] = {"summary": (proc.stdout.strip().splitlines() or ["?"])[-1], "seconds": time.time() - t0,
                            "returncode": proc.returncode}
        dump()
    with tempfile.TemporaryDirectory(prefix="charrnn-gpu-") as tmp:
        if not args.skip_speed:
            results["speed"] = speed_table(args.quick_speed)
            dump()
            if os.path.exists(args.corpus) and not args.quick_speed:
                results["sampling"] = sampling_speed(tmp, args.corpus)
            dump()
        if not args.skip_serve:  # benchmarks/serve.py with --device cuda: its own JSON file beside this one
            proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "serve.py"), "--device", "cuda",
                                   "--repeats", "2", "--out", args.out], cwd=ROOT, capture_output=True, text=True)
            print(proc.stdout[-3000:], proc.stderr[-2000:], file=sys.stderr)
            results["serve"] = {"output": proc.stdout.strip().splitlines()[-7:], "returncode": proc.returncode}
            dump()
        if not args.skip_quality:
            results["quality"] = quality(args.corpus, args.budget, args.quality_extra, tmp)
            dump()
    text = markdown(results)
    with open(os.path.join(args.out, "gpu-results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
