"""Headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright; never a browser download.

A missing Chromium skips these tests on a workstation and fails them in CI (``CI=true``), where
it must be installed. Each test gets a fresh browser with the flags of a locked-down headless
run; ``launch(fake_audio=wav)`` gives it a fake microphone that plays ``wav``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from voicebot.testing.wav import read_wav, silence, write_wav

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = os.environ.get("VOICEBOT_CHROMIUM", "/usr/bin/chromium")
FAKE_MIC_RATE = 48000
"""Chromium's fake capture reads a PCM16 WAV; 48 kHz mono is what it runs at natively."""

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

Launch = Callable[..., Awaitable["Browser"]]


def missing(message: str) -> None:
    """Fail in CI (browser tests must not pass as skipped there), skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def chromium_or_skip() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.path.isfile(CHROMIUM) else None)
    if path is None:
        missing(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set VOICEBOT_CHROMIUM)")
    assert path is not None
    return path


def fake_microphone_wav(source: Path, out: Path, *, lead_ms: int, tail_ms: int) -> Path:
    """``source`` as Chromium's fake microphone plays it: 48 kHz PCM16 mono, with silence before
    (the page connects) and after (the caller waits for the answer; the file then loops)."""
    pcm = read_wav(source, FAKE_MIC_RATE)
    padded = silence(lead_ms, FAKE_MIC_RATE) + pcm + silence(tail_ms, FAKE_MIC_RATE)
    write_wav(out, padded, FAKE_MIC_RATE)
    return out


@pytest_asyncio.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """``browser = await launch(fake_audio=None)``: a fresh headless Chromium, closed after."""
    executable = chromium_or_skip()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("the playwright package is not installed: pip install -e '.[dev]'")

    async with async_playwright() as playwright:
        browsers: list[Browser] = []

        async def start(fake_audio: Path | None = None) -> Browser:
            args = list(FLAGS)
            if fake_audio is not None:
                args += [
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={fake_audio}",
                ]
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=args
            )
            browsers.append(browser)
            return browser

        try:
            yield start
        finally:
            for browser in browsers:
                await browser.close()
