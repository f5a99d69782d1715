"""The dashboard page in headless Chromium: a simulated ACS call runs on a real server, and the
page shows the call, its transcript with the agent, and the turn's latency.

Set ``VOICEBOT_SCREENSHOT=path.png`` to keep a screenshot of the page during the call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Launch

from voicebot.server.realtime import dashboard_token
from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks, sample
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn

QUESTION = "What is my balance?"
ANSWER = "Your balance is 42 dollars and 17 cents."
GREETING = "Hello, thanks for calling. How can I help you today?"

PIPELINE = f"""\
name: dashboard-page-test
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
call: {{idle_timeout_secs: 30}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt: {{provider: fake, final_delay_ms: 100, transcripts: ["{QUESTION}"]}}
  - llm: {{provider: fake, ttft_ms: 100, greeting: "{GREETING}", replies: ["{ANSWER}"]}}
  - tts: {{provider: fake, first_byte_ms: 50}}
"""


@pytest.mark.browser
@pytest.mark.slow
async def test_the_dashboard_shows_a_live_call_with_its_transcript_and_latency(
    launch: Launch, pipeline_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    browser = await launch()
    page = await browser.new_page(viewport={"width": 1200, "height": 640})
    pipeline = pipeline_file(PIPELINE, "phone.yaml")
    async with no_leaked_tasks(grace_secs=2.0), LocalServer(local_settings(pipeline)) as server:
        token = dashboard_token(server.state.signing_key)
        await page.goto(f"http://127.0.0.1:{server.port}/dashboard?token={token}")
        await page.wait_for_selector("#status.live", timeout=5000)

        async with ACSCallSimulator(server.media_url("call-1"), call_connection_id="call-1") as sim:
            call = page.locator('#calls li[data-call-id="call-1"]')
            await call.wait_for(timeout=5000)
            await sim.silence(3000)  # the greeting
            await sim.play([Turn(sample("balance"), pause_after_ms=0)])
            bot = page.locator("#transcript .line.bot .text", has_text=ANSWER)
            await bot.wait_for(timeout=10000)
            await page.locator("#transcript .latency").wait_for(timeout=5000)
            await sim.silence(500)
            shot = Path(os.environ.get("VOICEBOT_SCREENSHOT") or tmp_path / "dashboard.png")
            png = await page.screenshot(path=str(shot))
            assert "live on" in (await call.inner_text())

            lines = page.locator("#transcript .line")
            texts = [t.strip() for t in await lines.locator(".text").all_inner_texts()]
            assert texts == [GREETING, QUESTION, ANSWER]
            assert await page.locator("#transcript .line.user .text").inner_text() == QUESTION
            latency = await page.locator("#transcript .latency").inner_text()
            assert latency.startswith("turn 1:") and "voice-to-voice" in latency
            assert "stt" in latency and "tts" in latency

        await page.locator("#calls li.ended").wait_for(timeout=5000)  # the caller hung up
        assert "ended (cancelled)" in await call.inner_text()
        assert "call ended: cancelled" in await page.locator("#transcript").inner_text()
        await page.close()
    assert len(png) > 10_000
