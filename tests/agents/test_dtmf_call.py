"""Keyed digits over a real ACS media socket: ``DtmfData`` messages authenticate the caller."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from voicebot.simulate import LocalServer, local_settings
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn
from voicebot.testing.wav import sample

REPO = Path(__file__).resolve().parents[2]

PIPELINE = f"""
name: bank-keypad
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt:
      provider: fake
      final_delay_ms: 150
      transcripts: ["I need help with my bill.", "What is my balance?"]
  - agents: {{store: {REPO / "agents"}}}
  - tts: {{provider: fake, first_byte_ms: 50, ms_per_char: 5}}
"""


@pytest.mark.slow
async def test_account_number_and_pin_keyed_over_the_socket(pipeline_file: Any) -> None:
    call_id = f"keypad-{uuid.uuid4().hex[:8]}"
    async with LocalServer(local_settings(pipeline_file(PIPELINE))) as server:
        sim = ACSCallSimulator(server.media_url(call_id), call_connection_id=call_id)
        async with sim:
            await sim.silence(1500)  # the greeting
            await sim.play([Turn(sample("help_bill"), pause_after_ms=2000)])
            await sim.send_dtmf("12345678#")
            await sim.silence(2000)
            await sim.send_dtmf("1234#")
            await sim.silence(2500)
            await sim.play([Turn(sample("balance"), pause_after_ms=2500)])
        record = server.transcript(call_id)
        assert record is not None
        await record.wait_finished(timeout=5.0)

    said = [(u.role, u.agent, u.text) for u in record.utterances]
    users = [text for role, _, text in said if role == "user"]
    assert users == [
        "I need help with my bill.",
        "DTMF: 12345678#",
        "DTMF: 1234#",
        "What is my balance?",
    ]
    bot = [(agent, text) for role, agent, text in said if role == "bot"]
    assert ("auth", "Thanks. Now please tell me your four-digit PIN, or your date of birth.") in bot
    assert bot[-1] == ("billing", "Your balance is $1,234.56.")
    assert [(h["from"], h["to"]) for h in record.handoffs] == [("auth", "billing")]
