"""`charrnn serve` under 1, 4, 16 and 64 concurrent streaming clients, beside `charrnn sample` in the same run.

    PYTHONPATH=$PWD python benchmarks/serve.py            # the real measurement (quiet machine): 2x512 tanh
    PYTHONPATH=$PWD python benchmarks/serve.py --quick    # a smoke test of the script on a tiny model

It trains a throwaway 2x512 tanh model for a few steps (speed does not depend on quality), measures
`charrnn sample`'s generation (one stream, and --num-samples 16; in process, model loaded first, so start-up is not
counted), then starts `charrnn serve` as a subprocess and, for each client count, has that many threads stream a
completion each at once over loopback: aggregate characters per second (all characters / from the first request
sent to the last stream ended) and time to first character (request sent to the first chunk with text) p50 and
p99. Each figure is the median of --repeats rounds after one
round of warm-up. Targets (issue 26): one client >= 0.8 of sample's one stream;
16 clients >= 0.8 of --num-samples 16; p99 time to first character under 100 ms. JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from about import about, commit, torch_machine  # noqa: E402  (machine, date, commit: every result file carries them)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def train_throwaway(where: str, hidden: int, layers: int) -> str:
    import random

    import charrnn

    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and then sleeps in warm sun while birds sing".split()
    text = "".join(" ".join(rng.choice(words) for _ in range(8)).capitalize() + ".\n" for _ in range(4000))
    corpus = os.path.join(where, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(text)
    result = charrnn.train(corpus, charrnn.ModelConfig(hidden_size=hidden, num_layers=layers),
                           charrnn.TrainConfig(batch_size=4, seq_len=32, max_steps=3, eval_every=3, warmup_steps=1,
                                               val_frac=0.05, test_frac=0.05),
                           run_dir=os.path.join(where, "run"), progress=False)
    return result.run_dir


def bench_sample(run: str, chars: int, num_samples: int, repeats: int) -> float:
    """sample's generation rate in characters per second (all samples together), the model loaded beforehand."""
    from charrnn.model.runtime import load_model
    from charrnn.inference.sampling import generate

    _, model, vocab = load_model(run)
    rates = []
    for r in range(repeats + 1):  # the first round warms up (numba's compiled kernel, caches)
        t0 = time.perf_counter()
        for _ in generate(model, vocab, chars, prime="The ", seed=r, num_samples=num_samples):
            pass
        if r:
            rates.append(chars * num_samples / (time.perf_counter() - t0))
    return statistics.median(rates)


class Serve:
    def __init__(self, run: str, max_streams: int, max_chars: int, device: str = "cpu"):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", run, "--port", "0", "--max-streams",
                                      str(max_streams), "--max-queue", "1024", "--max-chars", str(max_chars),
                                      "--device", device],
                                     env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for raw in self.proc.stderr:
            m = re.search(r"on http://([\d.]+):(\d+)$", raw.decode().strip())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise SystemExit(f"serve did not start (exit {self.proc.wait()})")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def stream_one(host: str, port: int, body: bytes, out: dict) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    first, data = None, []
    while True:
        piece = r.read1(65536)
        if not piece:
            break
        if first is None and b'"text": "' in piece and b'"text": ""' not in piece:
            first = time.perf_counter()
        data.append(piece)
    end = time.perf_counter()
    conn.close()
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in b"".join(data).decode().split("\n\n")
                   if e.startswith("data: {"))
    out.update(start=t0, first=first, end=end, chars=len(text))


def bench_clients(server: Serve, clients: int, chars: int, repeats: int) -> dict:
    rounds = []
    for r in range(repeats + 1):  # round 0 warms up (connections, first-request paths) and is not counted
        outs = [dict() for _ in range(clients)]
        bodies = [json.dumps({"prompt": "The ", "max_tokens": chars, "seed": r * 1000 + i, "stream": True}).encode()
                  for i in range(clients)]
        threads = [threading.Thread(target=stream_one, args=(server.host, server.port, bodies[i], outs[i]))
                   for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(o["chars"] for o in outs)
        assert total == clients * chars, (total, clients * chars)
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        ttfc = sorted(o["first"] - o["start"] for o in outs)
        if r == 0:
            continue
        rounds.append({"chars_per_s": total / span, "ttfc_p50_ms": 1e3 * statistics.median(ttfc),
                       "ttfc_p99_ms": 1e3 * ttfc[min(len(ttfc) - 1, round(0.99 * (len(ttfc) - 1)))]})
    return {k: statistics.median(x[k] for x in rounds) for k in rounds[0]} | {"rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2x32, 200 characters, 1 and 4 clients")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chars", type=int, default=2000, help="characters per stream")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--device", default="cpu", help="serve's --device (sample is always timed on the CPU)")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.chars, args.clients, args.repeats = 32, 200, "1,4", 1
    clients = [int(c) for c in args.clients.split(",")]
    result = {"about": about(benchmark="serve"), "machine": torch_machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "loadavg_start": os.getloadavg(), "model": f"tanh {args.layers}x{args.hidden}", "chars": args.chars,
              "repeats": args.repeats, "serve_device": args.device}
    print(f"machine: {result['machine']}  commit {result['commit'][:10]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = train_throwaway(tmp, args.hidden, args.layers)
        result["sample_1"] = bench_sample(run, args.chars, 1, args.repeats)
        result["sample_16"] = bench_sample(run, args.chars, 16, args.repeats)
        print(f"  sample: {result['sample_1']:.0f} chars/s one stream, {result['sample_16']:.0f} with 16", flush=True)
        server = Serve(run, max(16, max(clients)), args.chars, args.device)
        try:
            result["serve"] = {}
            for c in clients:
                row = bench_clients(server, c, args.chars, args.repeats)
                result["serve"][str(c)] = row
                print(f"  serve {c:3d} clients: {row['chars_per_s']:.0f} chars/s, time to first character "
                      f"p50 {row['ttfc_p50_ms']:.1f} ms p99 {row['ttfc_p99_ms']:.1f} ms", flush=True)
        finally:
            server.stop()
    serve = result["serve"]
    result["targets"] = {
        "one_client_vs_sample": serve["1"]["chars_per_s"] / result["sample_1"] if "1" in serve else None,
        "16_clients_vs_sample_16": serve["16"]["chars_per_s"] / result["sample_16"] if "16" in serve else None,
        "16_clients_ttfc_p99_ms": serve["16"]["ttfc_p99_ms"] if "16" in serve else None,
    }
    print(f"  targets: {result['targets']} (want >= 0.8, >= 0.8, < 100)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    kind = ("" if args.device == "cpu" else args.device + "-") + ("quick-" if args.quick else "")
    path = os.path.join(args.out, f"serve-{kind}{time.strftime('%Y%m%d-%H%M')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
