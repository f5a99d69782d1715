"""Tests of the user's own processor, written with voicebot's harness."""

from __future__ import annotations

from pathlib import Path

from pipecat.frames.frames import LLMContextFrame, TranscriptionFrame, TTSStartedFrame

from voicebot.build.loader import check_pipeline
from voicebot.testing import CallHarness, FakeSTTParams, sample

PIPELINE = Path(__file__).parent / "pipeline.yaml"


def test_pipeline_validates() -> None:
    _, problems = check_pipeline(PIPELINE)
    assert problems == []


async def test_llm_never_sees_the_account_number() -> None:
    async with CallHarness(PIPELINE) as call:
        await call.say("my account number is 12345678 and my PIN is 4321")
        await call.wait_for(TTSStartedFrame)

    (context_frame,) = call.of_type(LLMContextFrame)
    user_turns = [m for m in context_frame.context.get_messages() if m.get("role") == "user"]
    assert user_turns[-1]["content"] == "my account number is ######## and my PIN is ####"
    assert "12345678" not in str(context_frame.context.get_messages())


async def test_spoken_account_number_is_masked_after_stt() -> None:
    stt = FakeSTTParams(transcripts=["it is 987654 thanks"])
    async with CallHarness(PIPELINE, stt=stt) as call:
        await call.speak(sample("hello"))
        await call.wait_for(TTSStartedFrame)
    assert [f.text for f in call.of_type(TranscriptionFrame)] == ["it is ###### thanks"]
