"""The pipeline test harness, used the way the README tells users to use it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipecat.frames.frames import (
    InputDTMFFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    VADUserStoppedSpeakingFrame,
)

from voicebot.testing import (
    CallHarness,
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeTTSParams,
    sample,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "pipelines" / "demo.yaml"
ECHO = REPO / "pipelines" / "echo.yaml"


async def test_spoken_question_gets_the_scripted_answer_with_declared_latency() -> None:
    async with CallHarness(
        DEMO,
        stt=FakeSTTParams(transcripts=["What is my balance?"], final_delay_ms=150),
        llm=FakeLLMParams(replies=["Your balance is 42 dollars."], ttft_ms=300),
        tts=FakeTTSParams(first_byte_ms=150, ms_per_char=50),
    ) as call:
        await call.speak(sample("balance"))
        first_audio = await call.wait_for(OutputAudioRawFrame)
        await call.silence(3000)

    assert call.transcripts == ["What is my balance?"]
    assert call.replies == ["Your balance is 42 dollars."]
    (vad_stop,) = [
        r.at
        for r in call.frames
        if isinstance(r.frame, VADUserStoppedSpeakingFrame) and r.direction.name == "DOWNSTREAM"
    ]
    # After the VAD's end of speech: the STT final (150 ms) and the turn's speech timeout (200 ms)
    # run side by side; then the LLM's first token (300 ms); the TTS waits for the end of the
    # sentence (4 more tokens, 10 ms apart) and its first byte (150 ms).
    expected = 0.2 + 0.3 + 4 * 0.01 + 0.15
    assert first_audio.at - vad_stop == pytest.approx(expected, abs=0.002)
    # the whole reply is played: len(text) × 50 ms at 16 kHz, 2 bytes a sample
    expected = round(len("Your balance is 42 dollars.") * 0.05 * 16000) * 2
    assert len(call.audio_out) == pytest.approx(expected, abs=640)


async def test_two_turns_keep_the_conversation() -> None:
    llm = FakeLLMParams(replies=["Hello! How can I help?", "Your balance is 42 dollars."])
    async with CallHarness(DEMO, llm=llm) as call:
        await call.say("hello")
        await call.wait_for(TTSStartedFrame)
        await call.wait(3)
        await call.say("what is my balance")
        await call.wait_for(TTSStartedFrame, after=call.now)
        await call.wait(3)
    assert call.replies == ["Hello! How can I help?", "Your balance is 42 dollars."]
    second_request = call.processor(FakeLLMService).requests[1]
    assert [(m["role"], m["content"]) for m in second_request] == [
        ("user", "hello"),
        ("assistant", "Hello! How can I help?"),
        ("user", "what is my balance"),
    ]


async def test_dtmf_and_transcripts_flow_through_echo() -> None:
    async with CallHarness(ECHO) as call:
        await call.press("12#")
        await call.speak(b"\x10\x00" * 1600)  # 100 ms
        await call.wait_for(OutputAudioRawFrame)
    digits = [f.button.value for f in call.of_type(InputDTMFFrame)]
    assert digits == ["1", "2", "#"]
    assert len(call.audio_out) == 3200


async def test_virtual_clock_makes_a_long_call_fast() -> None:
    import time

    started = time.monotonic()
    async with CallHarness(ECHO) as call:
        await call.silence(30_000)
        assert call.now == pytest.approx(30.0, abs=0.05)
    assert time.monotonic() - started < 10


async def test_say_skips_stt() -> None:
    async with CallHarness(DEMO, llm=FakeLLMParams(replies=["Hi."], ttft_ms=100)) as call:
        await call.say("hello there")
        await call.wait_for(TTSStartedFrame)
    assert [f.text for f in call.of_type(TranscriptionFrame)] == ["hello there"]
