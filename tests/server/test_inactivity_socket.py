"""Inactivity over a real socket: a silent caller hears the reprompts, then the call ends idle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks
from voicebot.testing.acs_simulator import ACSCallSimulator

pytestmark = pytest.mark.slow

PIPELINE = """\
name: inactivity-test
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
call:
  idle_timeout_secs: 3
  reprompt_after_secs: 1
  reprompt_text: Are you still there?
  max_reprompts: 2
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 100, transcripts: ["hello"]}
  - llm: {provider: fake, ttft_ms: 100, replies: ["Hi."]}
  - tts: {provider: fake, first_byte_ms: 50}
"""


def _speech_starts_ms(sim: ACSCallSimulator, gap_ms: float = 300) -> list[float]:
    """Arrival times of the bot audio chunks that start a stretch of bot speech."""
    starts: list[float] = []
    last_end = -1e9
    for chunk in sim.bot_audio:
        if chunk.t_ms - last_end > gap_ms:
            starts.append(chunk.t_ms)
        last_end = chunk.t_ms
    return starts


async def test_a_silent_caller_is_reprompted_twice_then_the_call_ends(
    pipeline_file: Any,
) -> None:
    path: Path = pipeline_file(PIPELINE, "inactivity.yaml")
    async with no_leaked_tasks(grace_secs=2.0), LocalServer(local_settings(path)) as server:
        call_id = "silent-caller"
        url = server.media_url(call_id)
        async with ACSCallSimulator(url, call_connection_id=call_id) as sim:
            for _ in range(400):  # up to 8 s of silence, until the bot hangs up
                if sim.report().closed_by is not None:
                    break
                try:
                    await sim.silence(20)
                except TimeoutError:  # the frame could not be sent: the bot has hung up
                    break
            starts = _speech_starts_ms(sim)
            report = sim.report()
        assert report.closed_by == "bot"
        assert len(starts) == 2, starts
        # The first reprompt ~1 s into the silence, the second ~1 s after the first ends.
        assert 800 <= starts[0] <= 2000, starts
        assert starts[1] - starts[0] >= 1000, starts
        record = server.transcript(call_id)
        assert record is not None and await record.wait_finished(timeout=3.0)
        assert record.outcome == "idle"
        assert [u.text for u in record.utterances if u.role == "bot"] == [
            "Are you still there?",
            "Are you still there?",
        ]
