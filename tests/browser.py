"""Headless Chromium for the browser tests: Debian's chromium driven by playwright (never a browser of its own).

Where there is no browser the tests skip with the reason; under CI (CI=true) a missing browser fails them, so they
can never silently stop running. Screenshots go to ARTIFACTS (test-artifacts/ at the repository root, or
$CHARRNN_TEST_ARTIFACTS) and stay after the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CHARRNN_TEST_ARTIFACTS") or ROOT / "test-artifacts")

# flags that keep a headless Chromium from reaching for the network on its own (updates, sync, field trials)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}: the browser tests must run under CI")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """A playwright Browser on the system chromium, for the whole session."""
    exe = chromium_executable()
    if exe is None:
        _missing("no chromium on PATH (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def screenshot(page, name: str) -> Path:
    """Keep a screenshot of `page` as an artifact of the test run; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
