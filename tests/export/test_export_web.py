"""`charrnn export --format web`'s writer (charrnn/export/web.py) and its page and module, in a real browser.

The folder is served by a static server on 127.0.0.1 (http.server in a thread) and driven with headless Chromium
(tests/browser.py). The reference for the browser's numbers is torch's own CharRNN.step, computed here.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from browser import screenshot
from conftest import make_corpus

CELLS = ("tanh", "gru", "lstm")
# newlines, accented letters, a dash, a character outside the Basic Multilingual Plane (two UTF-16 units in JS)
EXTRA = "Café naïve — déjà vu 😀 Ωmega.\n"


def _corpus(path: Path) -> Path:
    make_corpus(path, n_chars=6000)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    mixed = "\n".join(line + (" " + EXTRA.strip() if i % 7 == 3 else "") for i, line in enumerate(lines))
    path.write_text(mixed + "\n" + EXTRA, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """cell -> (ckpt, model, vocab) of a tiny model trained a few steps on a corpus with newlines and non-ASCII."""
    import charrnn
    from charrnn.model.runtime import load_model

    base = tmp_path_factory.mktemp("web_models")
    corpus = _corpus(base / "corpus.txt")
    out = {}
    for cell in CELLS:
        result = charrnn.train(
            str(corpus),
            charrnn.ModelConfig(hidden_size=32, num_layers=2, cell=cell),
            charrnn.TrainConfig(batch_size=4, seq_len=16, max_steps=30, eval_every=30, warmup_steps=5,
                                val_frac=0.1, test_frac=0.1),
            run_dir=str(base / f"run-{cell}"),
            progress=False,
        )
        out[cell] = load_model(result.latest)
    return out


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """A static server over a root holding one exported folder per cell (site-tanh/, ...) and app/, a page of
    another folder that imports the module; yields (base URL, root, requests seen by the server)."""
    from charrnn.export.web import write_web

    root = tmp_path_factory.mktemp("web_root")
    for cell, (ckpt, model, vocab) in trained.items():
        write_web(ckpt, model, vocab, str(root / f"site-{cell}"))
    (root / "app").mkdir()
    (root / "app" / "index.html").write_text(APP_PAGE, encoding="utf-8")
    seen = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet; record the path instead
            seen.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# another page, in another folder, that uses the module as a library
APP_PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>app</title>
<pre id="out"></pre>
<script type="module">
import { load } from "../site-tanh/charrnn.js";
const model = await load("../site-tanh/model");
const opts = { prime: "the ", length: 300, temperature: 1, topK: 5, seed: 3 };
const text = await model.generate(opts);
let streamed = "";
for await (const chunk of model.stream(opts)) streamed += chunk;
document.getElementById("out").textContent = text;
window.result = { text, streamed, vocab: model.vocab.join("") };
</script>
"""


def open_page(browser, url: str, base: str):
    """A new page on url that records every request and every console error or page error."""
    page = browser.new_page()
    page.requests, page.errors = [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    return page


def assert_clean(page, base: str) -> None:
    outside = [u for u in page.requests if not u.startswith(base + "/")]
    assert outside == [], outside
    assert page.errors == [], page.errors


def in_page(page, expression: str, *args):
    """Run an async JS function body with `model` loaded from ./model in the page's folder."""
    return page.evaluate(
        "async (args) => { const { load } = await import('./charrnn.js'); const model = await load('./model');"
        f" {expression} }}",
        list(args),
    )


def torch_greedy(model, vocab, length: int, prime: str = "") -> str:
    """Greedy decoding with torch's CharRNN.step: feed the prime (or a newline), then take the argmax each time."""
    import torch

    start = prime or ("\n" if "\n" in vocab.index else vocab.chars[0])
    state = model.init_state(1)
    with torch.no_grad():
        for c in start:
            logits, state = model.step(torch.tensor([vocab.index[c]]), state)
        out = []
        for _ in range(length):
            i = int(logits[0].argmax())
            out.append(vocab.chars[i])
            logits, state = model.step(torch.tensor([i]), state)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# the files, without a browser


def test_files_hold_the_weights_vocabulary_and_metadata(trained, tmp_path):
    import numpy as np

    from charrnn.export.web import write_web

    for cell, (ckpt, model, vocab) in trained.items():
        out = tmp_path / f"site-{cell}"
        files = write_web(ckpt, model, vocab, str(out))
        assert sorted(os.path.basename(f) for f in files) == ["charrnn.js", "index.html", "model.bin", "model.json"]
        assert all(os.path.isfile(f) for f in files)
        raw = (out / "model.json").read_bytes()
        raw.decode("ascii")  # escaped: the vocabulary survives any server's idea of the encoding
        meta = json.loads(raw)
        # the vocabulary exactly, newline and non-ASCII included, as code points and as text
        assert "".join(map(chr, meta["vocab"])) == vocab.chars == ckpt["vocab"] == meta["vocab_text"]
        for c in "\n" + "é—😀Ω":
            assert c in meta["vocab_text"], repr(c)
        assert meta["format"] == "charrnn-web" and meta["format_version"] == 1
        assert meta["config"]["cell"] == cell and meta["config"]["hidden_size"] == 32
        assert meta["config"]["num_layers"] == 2 and meta["config"]["vocab_size"] == len(vocab)
        assert meta["step"] == ckpt["progress"]["step"] == 30
        assert meta["val_loss"] == pytest.approx(ckpt["progress"]["best_val_loss"])
        assert meta["corpus"]["sha256"] == ckpt["corpus"]["sha256"]
        assert meta["name"] == f"run-{cell}"
        # one float32 file, 4 bytes a parameter, each tensor exactly where model.json says
        n_params = sum(p.numel() for p in model.parameters())
        assert meta["parameters"] == n_params
        assert (out / "model.bin").stat().st_size == 4 * n_params
        data = np.fromfile(out / "model.bin", dtype="<f4")
        state = model.state_dict()
        assert [t["name"] for t in meta["weights"]["tensors"]] == list(state)
        for t in meta["weights"]["tensors"]:
            start = t["offset"] // 4
            got = data[start : start + t["size"]].reshape(t["shape"])
            np.testing.assert_array_equal(got, state[t["name"]].numpy())


def test_an_existing_folder_is_refused_and_a_failure_leaves_nothing(trained, tmp_path, monkeypatch):
    from charrnn.errors import UsageError
    from charrnn.export import web

    ckpt, model, vocab = trained["tanh"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        web.write_web(ckpt, model, vocab, str(tmp_path / "taken"))
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
    with pytest.raises(UsageError, match="does not exist"):
        web.write_web(ckpt, model, vocab, str(tmp_path / "no" / "such" / "site"))
    monkeypatch.setattr(web, "ASSETS", tmp_path / "missing-assets")
    with pytest.raises(OSError):
        web.write_web(ckpt, model, vocab, str(tmp_path / "site"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # no half-written folder, no temporary left


# --------------------------------------------------------------------------------------------------------------
# in the browser


def test_page_loads_cleanly_streams_and_is_reproducible(browser, served, trained):
    base, root, seen = served
    ckpt, _, _ = trained["tanh"]
    page = open_page(browser, f"{base}/site-tanh/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        assert page.text_content("#model-name") == "run-tanh"
        assert "tanh RNN, 2 × 32" in page.text_content("#info-arch")
        assert f"{ckpt['progress']['best_val_loss']:.4f} nats/char" in page.text_content("#info-loss")
        assert "30 steps" in page.text_content("#info-step")

        # count how often the output grows while one generation runs: the text streams in
        page.evaluate("""() => { window.updates = 0;
            new MutationObserver(() => window.updates++).observe(document.getElementById('output'),
                {characterData: true, childList: true, subtree: true}); }""")

        def run(seed: str, length: int = 1000) -> str:
            page.fill("#prompt", "The ")
            page.fill("#length", str(length))
            page.fill("#temperature", "0.9")
            page.fill("#seed", seed)
            page.evaluate("() => { window.updates = 0; }")
            page.click("#generate")
            page.wait_for_selector("#output[data-state=done]")
            assert page.get_attribute("#output", "data-chars") == str(length)
            text = page.text_content("#output")
            assert text.startswith("The ")
            assert len(list(text)) - len("The ") == length  # characters (one of them may be two UTF-16 units)
            return text

        first = run("1234")
        assert page.evaluate("window.updates") >= 1000 // 64  # one update at least every 64 characters
        assert "seed 1234" in page.text_content("#status")
        screenshot(page, "export-web-page")
        assert run("1234") == first  # the same seed: the same text
        assert run("4321") != first
        assert_clean(page, base)
        assert any(p.endswith("/site-tanh/model.bin") for p in seen)
    finally:
        page.close()


def test_stop_ends_a_long_generation(browser, served):
    base, _, _ = served
    page = open_page(browser, f"{base}/site-tanh/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#length", "1000000")
        page.click("#generate")
        page.wait_for_function("document.getElementById('output').textContent.length > 200")
        page.click("#stop")
        page.wait_for_selector("#output[data-state=stopped]")
        n = int(page.get_attribute("#output", "data-chars"))
        assert 200 <= n < 1000000
        assert "Stopped after" in page.text_content("#status")
        assert page.is_enabled("#generate") and not page.is_enabled("#stop")
        assert_clean(page, base)
    finally:
        page.close()


def test_a_bad_prompt_or_setting_is_one_clear_message(browser, served):
    base, _, _ = served
    page = open_page(browser, f"{base}/site-tanh/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#prompt", "жук")
        page.click("#generate")
        page.wait_for_selector("#status.error")
        assert "not in the model's vocabulary" in page.text_content("#status")
        assert '"ж"' in page.text_content("#status")
        assert page.get_attribute("#output", "data-state") == "idle"
        page.fill("#prompt", "the")
        page.fill("#topp", "1.5")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.includes('topP')")
        assert page.get_attribute("#status", "class") == "error"
        messages = in_page(page, """
            const out = [];
            for (const o of [{length: -1}, {temperature: -1}, {topK: 0}, {topP: 0}, {seed: 1.5}, {prime: "ж"}]) {
              try { await model.generate(o); out.push(null); } catch (e) { out.push(e.message); }
            }
            return out;""")
        assert all(messages), messages
        assert [m.split(" ")[0] for m in messages[:5]] == ["length", "temperature", "topK", "topP", "seed"]
        assert_clean(page, base)
    finally:
        page.close()


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_equals_torch(browser, served, trained, cell):
    base, _, _ = served
    _, model, vocab = trained[cell]
    page = open_page(browser, f"{base}/site-{cell}/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        got = in_page(page, """
            const [prime] = args;
            return [await model.generate({length: 500, temperature: 0}),
                    await model.generate({length: 500, temperature: 0, prime}),
                    await model.generate({length: 200, temperature: 1, topK: 1, seed: 5}),
                    await model.generate({length: 200, temperature: 1, topP: 1e-9, seed: 6})];""", "Café the ")
        expected = torch_greedy(model, vocab, 500)
        assert got[0] == expected
        assert got[1] == torch_greedy(model, vocab, 500, prime="Café the ")
        # top-k 1 and a tiny top-p keep only the most likely character: greedy whatever the draw
        assert got[2] == expected[:200] and got[3] == expected[:200]
        assert_clean(page, base)
    finally:
        page.close()


def test_seeded_sampling_is_reproducible_and_follows_the_options(browser, served, trained):
    base, _, _ = served
    _, _, vocab = trained["gru"]
    page = open_page(browser, f"{base}/site-gru/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        a, b, c, k2, chars = in_page(page, """
            const o = {length: 400, temperature: 1.2, seed: 99};
            const k2 = await model.generate({length: 400, temperature: 1, topK: 2, seed: 1});
            let chars = 0;
            await model.generate({...o, onChar: () => chars++});
            return [await model.generate(o), await model.generate(o), await model.generate({...o, seed: 100}),
                    k2, chars];""")
        assert a == b and a != c and chars == 400
        assert len(list(a)) == 400 and set(a) <= set(vocab.chars)
        assert len(set(k2)) > 1  # top-k 2 draws, not greedy
        assert_clean(page, base)
    finally:
        page.close()


def test_the_module_works_from_another_page(browser, served):
    base, _, seen = served
    page = open_page(browser, f"{base}/app/index.html", base)
    try:
        page.wait_for_function("window.result !== undefined")
        result = page.evaluate("window.result")
        assert len(list(result["text"])) == 300 and result["text"] == result["streamed"]
        site = open_page(browser, f"{base}/site-tanh/index.html", base)
        try:
            site.wait_for_selector("body[data-ready=true]")
            same = in_page(site, "return await model.generate({prime: 'the ', length: 300, temperature: 1, topK: 5, seed: 3});")
            assert same == result["text"]  # the same model, options and seed: the same text on any page
            assert_clean(site, base)
        finally:
            site.close()
        assert_clean(page, base)
    finally:
        page.close()


def test_the_sampling_rule_is_charrnn_samples(browser, served):
    """charrnn.js's `pick` draws the same ids as charrnn.inference.sampling.pick from the same logits and uniforms."""
    import numpy as np

    from charrnn.inference.sampling import pick

    base, _, _ = served
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((300, 40)) * 2).astype(np.float32)
    logits[:50, :10] = logits[:50, :1]  # ties: the order among equal probabilities must match too
    uniforms = 1.0 - rng.random(300)
    cases = [dict(temperature=1.0), dict(temperature=0.5, topK=3), dict(temperature=1.3, topP=0.9),
             dict(temperature=0.8, topK=5, topP=0.5), dict(temperature=2.0, topK=1), dict(temperature=0.7, topP=0.05)]
    page = open_page(browser, f"{base}/site-tanh/index.html", base)
    try:
        page.wait_for_selector("body[data-ready=true]")
        got = page.evaluate("""async ([logits, uniforms, cases]) => {
            const { pick } = await import('./charrnn.js');
            return cases.map((o) => logits.map((row, n) => pick(row, uniforms[n], o)));
        }""", [logits.astype(float).tolist(), uniforms.tolist(), cases])
        for case, ids in zip(cases, got):
            expected = pick(logits, uniforms, case["temperature"], case.get("topK"), case.get("topP"))
            assert ids == expected.tolist(), case
        assert_clean(page, base)
    finally:
        page.close()


def test_a_damaged_weights_file_is_one_clear_message(browser, served, trained, tmp_path):
    base, root, _ = served
    ckpt, model, vocab = trained["lstm"]
    from charrnn.export.web import write_web

    write_web(ckpt, model, vocab, str(root / "site-damaged"))
    with open(root / "site-damaged" / "model.bin", "r+b") as f:
        f.truncate(1000)
    page = open_page(browser, f"{base}/site-damaged/index.html", base)
    try:
        page.wait_for_selector("#status.error")
        assert "does not match model.json" in page.text_content("#status")
        assert page.text_content("#model-name") == "The model could not be loaded"
        assert not page.is_enabled("#generate")
        assert_clean(page, base)
    finally:
        page.close()
