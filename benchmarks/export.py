"""One stream's generation speed of an exported model: torch (`charrnn sample`), onnxruntime, and the web page.

    python benchmarks/export.py                      # 2x128 and 2x512 tanh, 2,000 characters, median of 3
    python benchmarks/export.py --sizes 512 --chars 5000 --repeats 5
    python benchmarks/export.py --smoke              # a few seconds on tiny sizes: does the script work

For each size it trains a throwaway model for a few steps on tiny-shakespeare (speed does not depend on quality),
then measures characters per second of one stream, temperature 1, a fixed seed:

- torch: `python -m charrnn sample RUN -n N --seed 1` through the CLI, timed as a whole process; the start-up
  (interpreter, imports, loading the checkpoint) is taken out by timing `-n 0` the same way:
  chars/s = N / (t(N) - t(0)), each time the median of --repeats runs.
- onnxruntime: `python -m charrnn export RUN --format onnx -o DIR`, then DIR/step.onnx run in this process one
  character at a time (inputs ids int64 [1] and h [layers, 1, hidden]; outputs logits and h_out), drawing with
  charrnn's own `pick` as `charrnn sample` does; the loop alone is timed (a warm-up of 100 characters first).
- web: `write_web` into a folder served by http.server on 127.0.0.1, the page opened in headless Chromium (the
  system's, driven by playwright), Generate clicked with --chars characters; the page's own timing of the
  generation, text streaming into the page included (a warm-up generation of 200 characters first). Also the
  module alone (`model.generate` in the page, no DOM).

And the file sizes: the checkpoint, the web folder's files, the ONNX files. The results go to
benchmarks/results/export-DATE.json with the machine (CPU model, bf16 or not), the date and the commit. Run it on
an otherwise idle machine; the numbers of a loaded one mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from about import about, commit, torch_machine  # noqa: E402  (machine, date, commit: every result file carries them)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CORPUS = os.path.join(ROOT, "..", "shared", "corpora", "tinyshakespeare.txt")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fail(message: str) -> None:
    print(f"benchmarks/export.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_model(corpus: str, hidden: int, layers: int, steps: int, run_dir: str) -> str:
    import charrnn

    result = charrnn.train(
        corpus,
        charrnn.ModelConfig(hidden_size=hidden, num_layers=layers, cell="tanh", dropout=0.0),
        charrnn.TrainConfig(batch_size=4, seq_len=32, max_steps=steps, eval_every=steps, warmup_steps=1,
                            val_frac=0.02, test_frac=0.0),
        run_dir=run_dir,
        progress=False,
    )
    return result.latest


# ---------------------------------------------------------------------------------------------------------------


def bench_torch(ckpt: str, chars: int, repeats: int) -> dict:
    def timed(n: int) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", ckpt, "-n", str(n), "--seed", "1"],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            fail(f"charrnn sample failed: {proc.stderr.decode(errors='replace').strip()}")
        return elapsed

    runs = [(timed(0), timed(chars)) for _ in range(repeats)]  # interleaved, so drift hits both alike
    start = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    return {"how": "charrnn sample through the CLI: chars / (t(-n chars) - t(-n 0)), medians",
            "startup_s": start, "total_s": total, "chars": chars,
            "chars_per_s": chars / (total - start) if total > start else None}


def export_onnx(run_dir: str, out: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "charrnn", "export", run_dir, "--format", "onnx", "-o", out],
                          env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    step = os.path.join(out, "step.onnx")
    if proc.returncode != 0 or not os.path.isfile(step):
        why = [line.strip(" \u2500\u2502\u256d\u256e\u2570\u256f") for line in
               proc.stderr.decode(errors="replace").splitlines()]  # typer's usage errors come in a box
        why = [line for line in why if line and not line.startswith(("Usage:", "Try "))]
        fail("`charrnn export --format onnx` did not write step.onnx (the export command comes with the export "
             f"branch; run this after the merge): {why[-1] if why else 'no message'}")
    return step


def bench_onnx(step_path: str, vocab, layers: int, hidden: int, chars: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from charrnn.inference.sampling import pick

    session = ort.InferenceSession(step_path, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    if names != {"ids", "h"}:
        fail(f"step.onnx has inputs {sorted(names)}, expected ids and h (a tanh model)")
    start = vocab.index.get("\n", 0)

    def run(n: int, seed: int) -> float:
        rng = np.random.default_rng(seed)
        uniforms = 1.0 - rng.random((n, 1))
        h = np.zeros((layers, 1, hidden), dtype=np.float32)
        ids = np.array([start], dtype=np.int64)
        t0 = time.perf_counter()
        logits, h = session.run(["logits", "h_out"], {"ids": ids, "h": h})
        for k in range(n):
            ids = pick(logits, uniforms[k], 1.0, None, None).astype(np.int64)
            logits, h = session.run(["logits", "h_out"], {"ids": ids, "h": h})
        return time.perf_counter() - t0

    run(100, 0)  # warm-up
    times = [run(chars, r + 1) for r in range(repeats)]
    return {"how": "onnxruntime CPU in-process, one step.onnx call per character, charrnn's pick; median",
            "ort": ort.__version__, "seconds": statistics.median(times), "chars": chars,
            "chars_per_s": chars / statistics.median(times)}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def bench_web(site: str, chars: int, repeats: int) -> dict:
    import shutil

    from playwright.sync_api import sync_playwright

    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        fail("no chromium on PATH (apt-get install chromium)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=site))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
                page.wait_for_selector("body[data-ready=true]", timeout=120_000)

                def generate(n: int, seed: int) -> float:
                    page.fill("#length", str(n))
                    page.fill("#temperature", "1")
                    page.fill("#seed", str(seed))
                    page.click("#generate")
                    page.wait_for_selector("#output[data-state=done]", timeout=600_000)
                    assert int(page.get_attribute("#output", "data-chars")) == n
                    return float(page.get_attribute("#output", "data-seconds"))

                generate(200, 0)  # warm-up: the JIT compiles the loops
                page_times = [generate(chars, r + 1) for r in range(repeats)]
                module_times = page.evaluate(
                    """async ([n, repeats]) => {
                        const { load } = await import('./charrnn.js');
                        const model = await load('./model');
                        await model.generate({length: 200, seed: 0});
                        const out = [];
                        for (let r = 0; r < repeats; r++) {
                          const t0 = performance.now();
                          await model.generate({length: n, temperature: 1, seed: r + 1});
                          out.push((performance.now() - t0) / 1000);
                        }
                        return out;
                    }""", [chars, repeats])
                version = browser.version
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    page_s, module_s = statistics.median(page_times), statistics.median(module_times)
    return {"how": "the exported page in headless Chromium: Generate clicked, the page's own timing (text streamed "
                   "into the page); and model.generate alone in the page; medians after a warm-up",
            "chromium": version, "chars": chars, "seconds": page_s, "chars_per_s": chars / page_s,
            "module_seconds": module_s, "module_chars_per_s": chars / module_s}


def sizes(paths: dict) -> dict:
    out = {}
    for label, path in paths.items():
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                out[f"{label}/{name}"] = os.path.getsize(os.path.join(path, name))
        elif os.path.isfile(path):
            out[label] = os.path.getsize(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,512", help="hidden sizes, comma-separated (tanh, --layers layers)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chars", type=int, default=2000, help="characters generated per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--corpus", default=CORPUS)
    parser.add_argument("--skip", default="", help="comma-separated: torch, onnx, web")
    parser.add_argument("--out", default=None, help="the JSON file (default benchmarks/results/export-DATE.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few characters: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.chars, args.repeats, args.train_steps = "16", 100, 1, 1
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"torch", "onnx", "web"}:
        fail(f"--skip takes torch, onnx, web, not {args.skip}")
    if not os.path.isfile(args.corpus):
        fail(f"no corpus at {args.corpus} (give one with --corpus)")

    from charrnn.export.web import write_web
    from charrnn.model.runtime import load_model

    now = datetime.datetime.now(datetime.timezone.utc)
    results = {"about": about(benchmark="export"), "benchmark": "export", "date": now.isoformat(timespec="seconds"), "commit": commit(),
               "machine": torch_machine(), "corpus": os.path.basename(args.corpus), "chars": args.chars,
               "repeats": args.repeats, "smoke": args.smoke, "rows": []}
    with tempfile.TemporaryDirectory(prefix="charrnn-export-bench-") as tmp:
        for hidden in (int(s) for s in args.sizes.split(",")):
            label = f"{args.layers}x{hidden}"
            say(f"{label}: training a throwaway model for {args.train_steps} steps")
            run_dir = os.path.join(tmp, f"run-{label}")
            ckpt_path = train_model(args.corpus, hidden, args.layers, args.train_steps, run_dir)
            ckpt, model, vocab = load_model(ckpt_path)
            row = {"model": f"tanh {label}", "parameters": sum(p.numel() for p in model.parameters()),
                   "vocab_size": len(vocab)}
            site = os.path.join(tmp, f"site-{label}")
            write_web(ckpt, model, vocab, site)
            paths = {"checkpoint": ckpt_path, "web": site}
            if "torch" not in skip:
                say(f"{label}: torch (charrnn sample)")
                row["torch"] = bench_torch(ckpt_path, args.chars, args.repeats)
            if "onnx" not in skip:
                say(f"{label}: onnxruntime")
                onnx_dir = os.path.join(tmp, f"onnx-{label}")
                step = export_onnx(run_dir, onnx_dir)
                row["onnx"] = bench_onnx(step, vocab, args.layers, hidden, args.chars, args.repeats)
                paths["onnx"] = onnx_dir
            if "web" not in skip:
                say(f"{label}: the web page in headless Chromium")
                row["web"] = bench_web(site, args.chars, args.repeats)
            row["bytes"] = sizes(paths)
            if "torch" in row and "onnx" in row and row["torch"]["chars_per_s"]:
                row["onnx_over_torch"] = row["onnx"]["chars_per_s"] / row["torch"]["chars_per_s"]
            results["rows"].append(row)
            rates = ", ".join(f"{k} {row[k]['chars_per_s']:,.0f}" for k in ("torch", "onnx", "web")
                              if k in row and row[k].get("chars_per_s"))
            say(f"{label}: chars/s of one stream: {rates}")
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"export-{now:%Y%m%d-%H%M}{'-smoke' if args.smoke else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    say(f"wrote {os.path.relpath(out)}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
