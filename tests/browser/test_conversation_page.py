"""The conversation page in headless Chromium: its fake microphone plays a bank caller's WAV, the
page streams it to a real server running the offline stack (Silero VAD, Whisper tiny.en, the bank
agents' offline policy, piper), and shows the recognised question, the agent and the bot's reply.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Launch, fake_microphone_wav

from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks

REPO = Path(__file__).resolve().parents[2]
CALLER_WAV = REPO / "voicebot/testing/data/bank_balance.wav"
PIPELINE = REPO / "pipelines/acs_phone.yaml"


@pytest.mark.browser
@pytest.mark.slow
async def test_the_page_shows_the_recognised_question_and_the_bot_reply(
    launch: Launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    microphone = fake_microphone_wav(
        CALLER_WAV, tmp_path / "caller.wav", lead_ms=6000, tail_ms=30000
    )
    browser = await launch(fake_audio=microphone)
    page = await browser.new_page()
    async with no_leaked_tasks(grace_secs=2.0), LocalServer(
        local_settings(PIPELINE), start_timeout=60
    ) as server:
        await page.goto(f"http://127.0.0.1:{server.port}/conversation")
        await page.click("#talk")
        await page.locator("#status", has_text="Listening").wait_for(timeout=10000)
        greeting = page.locator('#transcript .line[data-role="bot"]').first
        await greeting.wait_for(timeout=20000)
        question = page.locator('#transcript .line[data-role="user"]:not(.interim) .text')
        await question.first.wait_for(timeout=30000)
        heard = (await question.first.inner_text()).lower()
        reply = page.locator('#transcript .line[data-role="user"] ~ .line[data-role="bot"] .text')
        await reply.first.wait_for(timeout=30000)
        answer = await reply.first.inner_text()
        agent = await page.locator("#agent").inner_text()
        bot_audio_ms = int(await page.evaluate("document.body.dataset.botAudioMs || '0'"))
        await page.click("#talk")  # stop
        await page.locator("#status", has_text="ended").wait_for(timeout=5000)
        await page.close()
    assert "balance" in heard  # Whisper heard the caller through the page
    assert answer.strip() and agent == "auth"  # the bank's first agent answered
    assert bot_audio_ms > 1000  # the greeting and the start of the answer were played
