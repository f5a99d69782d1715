"""The echo bot returns the caller's audio, scaled by its gain, with no added delay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pipecat.frames.frames import OutputAudioRawFrame

from voicebot.testing import CallHarness, read_wav, sample

PIPELINE = Path(__file__).parent / "pipeline.yaml"


async def test_caller_hears_themselves_at_the_configured_gain() -> None:
    async with CallHarness(PIPELINE, env={"ECHO_GAIN": "0.5"}) as call:
        spoke_until = await call.speak(sample("hello"))
        await call.wait_for(OutputAudioRawFrame)

    sent = np.frombuffer(read_wav(sample("hello"), 16000), dtype=np.int16)
    heard = np.frombuffer(call.audio_out, dtype=np.int16)[: len(sent)]
    assert np.allclose(heard, sent * 0.5, atol=1)
    # each 20 ms frame comes back the moment it arrives
    last = [r.at for r in call.output if isinstance(r.frame, OutputAudioRawFrame)][-1]
    assert last <= spoke_until


async def test_default_gain_comes_from_the_yaml() -> None:
    async with CallHarness(PIPELINE, env={}) as call:
        await call.speak(b"\x00\x10" * 320)
        await call.wait_for(OutputAudioRawFrame)
    assert np.frombuffer(call.audio_out, dtype=np.int16)[0] == int(0x1000 * 0.8)
