"""The caller-audio lane: caller frames through the VAD and the STT without their queues."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from voicebot.build.builder import CallerAudioStop, build_processors
from voicebot.build.context import BuildContext
from voicebot.build.lane import CallerAudioLane, lane_safe
from voicebot.build.loader import load_pipeline
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness, FakeLLMParams, FakeSTTParams, sample
from voicebot.testing.fakes import FakeSTTService

PHONE = """
name: lane
transport: acs
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 150, transcripts: ["What is my balance?", "Thanks."]}
  - llm: {provider: fake, ttft_ms: 100, replies: ["Forty two.", "Bye."]}
  - tts: {provider: fake, first_byte_ms: 50}
"""

ECHO_AFTER_VAD = """
name: lane-echo
transport: acs
processors:
  - vad: {provider: silero}
  - echo
  - stt: {provider: fake, transcripts: ["x"]}
  - llm: {provider: fake, replies: ["x"]}
"""


def _processors(path: Path) -> list:
    spec = load_pipeline(path)
    context = BuildContext(call_id="c", audio=spec.audio, resources=SharedResources())
    return build_processors(spec, context).processors


def test_a_vad_and_an_stt_before_the_stop_make_a_lane(
    pipeline_file: Callable[[str], Path],
) -> None:
    processors = _processors(pipeline_file(PHONE))
    assert isinstance(processors[2], CallerAudioStop)
    assert CallerAudioLane.of(processors) is not None


def test_a_processor_the_lane_does_not_know_keeps_the_queues(
    pipeline_file: Callable[[str], Path],
) -> None:
    processors = _processors(pipeline_file(ECHO_AFTER_VAD))
    assert CallerAudioLane.of(processors) is None  # the echo reads audio its own way
    assert isinstance(processors[3], CallerAudioStop)
    assert CallerAudioLane.of(processors[:1]) is None  # no stop: audio goes everywhere


def test_an_stt_with_its_own_frame_handling_must_opt_in() -> None:
    class Custom(FakeSTTService):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)

    class OptedIn(Custom):
        caller_audio_lane = True

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)

    params = FakeSTTParams(transcripts=["x"])
    assert lane_safe(FakeSTTService(params=params))
    assert not lane_safe(Custom(params=params))
    assert lane_safe(OptedIn(params=params))


async def _turn(path: Path, *, lane: bool) -> tuple[list[tuple[str, float]], CallHarness]:
    async with CallHarness(
        path,
        stt=FakeSTTParams(transcripts=["What is my balance?"], final_delay_ms=150),
        llm=FakeLLMParams(replies=["Forty two."], ttft_ms=100),
        caller_audio_lane=lane,
    ) as call:
        await call.silence(500)
        await call.speak(sample("balance"))
        await call.silence(1500)
    kinds = (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame, TranscriptionFrame)
    seen = [
        (type(r.frame).__name__, round(r.at, 3))
        for r in call.frames
        if isinstance(r.frame, kinds) and r.direction == FrameDirection.DOWNSTREAM
    ]
    return seen, call


async def test_the_lane_hears_what_the_queues_hear_at_the_same_times(
    pipeline_file: Callable[[str], Path],
) -> None:
    path = pipeline_file(PHONE)
    through_lane, with_lane = await _turn(path, lane=True)
    through_queues, without = await _turn(path, lane=False)

    assert with_lane.caller_audio_lane is not None
    assert with_lane.caller_audio_lane.frames == (500 + 1394 + 1500) // 20 + 1  # every frame
    assert without.caller_audio_lane is not None and without.caller_audio_lane.frames == 0
    assert with_lane.transcripts == without.transcripts == ["What is my balance?"]
    assert with_lane.replies == ["Forty two."]
    assert [name for name, _ in through_lane] == [name for name, _ in through_queues]
    for (_, at_lane), (_, at_queues) in zip(through_lane, through_queues, strict=True):
        assert at_lane == pytest.approx(at_queues, abs=0.021)  # within a frame
    # no caller audio gets past the STT either way
    for call in (with_lane, without):
        assert not [r for r in call.output if isinstance(r.frame, InputAudioRawFrame)]
