"""The page `charrnn serve` serves at /, in a real headless Chromium: nothing leaves 127.0.0.1, Generate streams,
Stop stops, and the text is the API's for the same seed. A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import time

import pytest

from browser import screenshot
from servers import Server

pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def server(tiny_run):
    s = Server(tiny_run, "--port", 0, "--max-chars", 100_000)
    try:
        yield s
    finally:
        s.stop()


def test_page_generates_stops_and_matches_the_api(server, browser):
    # the page's Content-Security-Policy refuses eval, which playwright's wait_for_function uses: bypass it here
    # (the requests the page makes are recorded and checked below all the same)
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('step 40')", timeout=60_000)
        page.fill("#prompt", "The ")
        page.fill("#temperature", "0.8")
        page.fill("#length", "300")
        page.fill("#seed", "7")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.includes('(length)')",
                               timeout=120_000)
        shown = page.inner_text("#out")
        status, body = server.request("POST", "/v1/completions", body={
            "prompt": "The ", "max_tokens": 300, "temperature": 0.8, "seed": 7})
        assert status == 200
        assert len(shown) >= 200
        assert shown == "The " + body["choices"][0]["text"]
        # coloured by surprisal: every generated character has its own background
        coloured = page.eval_on_selector_all("#out span", "els => els.filter(e => e.style.background).length")
        assert coloured == 300
        screenshot(page, "serve-page")

        page.fill("#length", "100000")
        page.fill("#seed", "")
        page.click("#generate")
        page.wait_for_function("document.getElementById('out').textContent.length >= 204", timeout=120_000)
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('stopped')",
                               timeout=60_000)
        deadline = time.monotonic() + 60
        while server.metric("charrnn_active_streams") != 0:  # the server dropped the stream the page left
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopped = len(page.inner_text("#out"))
        assert 204 <= stopped < 100_004
        assert page.is_enabled("#generate") and not page.is_enabled("#stop")
        assert len(page.inner_text("#out")) == stopped  # nothing arrives after Stop
    finally:
        context.close()
    assert requested, "the page made no requests"
    outside = [u for u in requested if not (u.startswith(server.url + "/") or u.startswith("data:"))]
    assert outside == [], outside
