"""A silent caller is reprompted after ``call.reprompt_after_secs``, at most ``max_reprompts``
times in a row, then the idle timeout ends the call.

Calls run on the harness's virtual clock, so the declared seconds come out exact. The pipelines
end in ``playout``, a stand-in for the output transport: it plays the TTS audio in real time
(virtual) and reports the bot's speech upstream as pipecat's output transport does
(``BotStartedSpeakingFrame``, ``BotSpeakingFrame`` per chunk, ``BotStoppedSpeakingFrame``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    BotSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.loader import load_pipeline
from voicebot.build.problems import ConfigError
from voicebot.build.registry import Registry, default_registry, processor
from voicebot.processors.inactivity import InactivityMonitor
from voicebot.runner import CallOutcome
from voicebot.testing import CallHarness
from voicebot.testing.recorder import Recorded

WritePipeline = Callable[..., Path]

registry = Registry()
for _name in default_registry().names():
    registry.add(default_registry().get(_name))


@processor("playout", consumes=["audio_out"], emits=["audio_out"], registry=registry)
class Playout(FrameProcessor):
    """Plays bot audio in real time and reports the bot's speech upstream, like an output
    transport."""

    def __init__(self) -> None:
        super().__init__()
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if not self._speaking:
                self._speaking = True
                await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
            await self.push_frame(BotSpeakingFrame(), FrameDirection.UPSTREAM)
            await self.push_frame(frame, direction)
            await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
            return
        if isinstance(frame, TTSStoppedFrame) and self._speaking:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
        await self.push_frame(frame, direction)


PIPELINE = """
name: reprompt
transport: acs
call: {{idle_timeout_secs: {idle}, reprompt_after_secs: {after}, max_reprompts: {most},
        reprompt_text: "Are you still there?"}}
processors:
  - stt: {{provider: fake}}
  - llm: {{provider: fake, greeting: "Hello, how can I help?", ttft_ms: 100,
           replies: ["Sure, one moment."]}}
  - tts: {{provider: fake, first_byte_ms: 100, ms_per_char: {ms_per_char}}}
  - playout
"""


def pipeline(
    write: WritePipeline,
    *,
    after: float = 5,
    idle: float = 12,
    most: int = 2,
    ms_per_char: float = 40,
) -> Path:
    """The bot's speech lasts ``ms_per_char`` per character (the greeting has 22)."""
    return write(PIPELINE.format(after=after, idle=idle, most=most, ms_per_char=ms_per_char))


def times(call: CallHarness, kind: type[Frame], direction: FrameDirection) -> list[float]:
    return [r.at for r in call.frames if isinstance(r.frame, kind) and r.direction == direction]


def flatten(processor: FrameProcessor) -> list[FrameProcessor]:
    """Leaf processors in pipeline order (pipelines and their sources/sinks opened up)."""
    inner = [p for p in processor.processors if p is not processor]
    if not inner:
        return [processor]
    return [leaf for p in inner for leaf in flatten(p)]


def reprompts(call: CallHarness) -> list[Recorded]:
    return [
        r
        for r in call.frames
        if isinstance(r.frame, TTSSpeakFrame) and r.frame.text == "Are you still there?"
    ]


async def test_a_silent_caller_is_reprompted_then_the_call_ends_idle(
    pipeline_file: WritePipeline,
) -> None:
    spec = load_pipeline(pipeline(pipeline_file), registry=registry)
    async with CallHarness(spec) as call:
        await call.wait(60)
        assert call.call.outcome == CallOutcome.IDLE
    asked = [r.at for r in reprompts(call)]
    bot_stops = times(call, BotStoppedSpeakingFrame, FrameDirection.UPSTREAM)
    assert len(asked) == 2
    # Greeting, reprompt, reprompt: each reprompt 5 s after the bot stopped speaking.
    assert len(bot_stops) == 3
    assert asked == pytest.approx([bot_stops[0] + 5, bot_stops[1] + 5], abs=1e-6)
    # The last reprompt's audio was the last activity: 12 s later the call ended.
    last_speech = times(call, BotSpeakingFrame, FrameDirection.UPSTREAM)[-1]
    assert call.call.ended_at is not None
    ended = [r.at for r in call.frames if type(r.frame).__name__ == "CancelFrame"]
    assert ended and ended[0] == pytest.approx(last_speech + 12, abs=0.05)


async def test_the_caller_speaking_resets_the_count_and_holds_the_timer(
    pipeline_file: WritePipeline,
) -> None:
    spec = load_pipeline(pipeline(pipeline_file, idle=30, most=1), registry=registry)
    async with CallHarness(spec) as call:
        await call.wait(10)  # greeting (≈1 s), 5 s of silence, the reprompt
        assert len(reprompts(call)) == 1
        # The caller talks for 8 s: longer than reprompt_after_secs, and no reprompt meanwhile.
        await call.send(VADUserStartedSpeakingFrame())
        await call.wait(8)
        await call.send(VADUserStoppedSpeakingFrame())
        caller_stopped = call.now
        await call.say("I need help with my bill")
        await call.wait(20)
        assert call.call.outcome is None
    asked = [r.at for r in reprompts(call)]
    bot_stops = times(call, BotStoppedSpeakingFrame, FrameDirection.UPSTREAM)
    # One reprompt after the greeting; the caller spoke, so one more after the bot's answer.
    assert len(asked) == 2
    answer_end = next(t for t in bot_stops if t > caller_stopped)
    assert asked[1] == pytest.approx(answer_end + 5, abs=1e-6)
    assert call.replies == ["Sure, one moment."]


async def test_no_reprompt_while_the_bot_speaks(pipeline_file: WritePipeline) -> None:
    # A greeting of 22 characters at 400 ms each: 8.8 s, longer than reprompt_after_secs.
    spec = load_pipeline(pipeline(pipeline_file, idle=30, ms_per_char=400), registry=registry)
    async with CallHarness(spec) as call:
        await call.wait(20)
    started = times(call, BotStartedSpeakingFrame, FrameDirection.UPSTREAM)
    stopped = times(call, BotStoppedSpeakingFrame, FrameDirection.UPSTREAM)
    assert stopped[0] - started[0] == pytest.approx(8.8, abs=0.05)
    assert [r.at for r in reprompts(call)] == pytest.approx([stopped[0] + 5], abs=1e-6)


async def test_the_monitor_sees_no_caller_audio(pipeline_file: WritePipeline) -> None:
    spec = load_pipeline(pipeline(pipeline_file), registry=registry)
    # Through the queues: with the caller-audio lane, audio would not enter them at all.
    async with CallHarness(spec, caller_audio_lane=False) as call:
        await call.silence(200)
        monitor = call.processor(InactivityMonitor)
        names = [p.name for p in flatten(call.call.worker.pipeline)]
    # Right after the processor that drops caller audio: no 20 ms frames reach it.
    index = names.index(monitor.name)
    assert names[index - 1] == "caller-audio-stop"
    # Caller audio went in, and none of it came out the end of the pipeline.
    assert any(isinstance(r.frame, InputAudioRawFrame) for r in call.frames)
    assert not any(isinstance(r.frame, InputAudioRawFrame) for r in call.output)


async def test_no_reprompt_without_the_setting(pipeline_file: WritePipeline) -> None:
    text = PIPELINE.replace(", reprompt_after_secs: {after}", "").format(
        idle=12, after=0, most=2, ms_per_char=40
    )
    spec = load_pipeline(pipeline_file(text), registry=registry)
    async with CallHarness(spec) as call:
        await call.wait(20)
        with pytest.raises(LookupError):
            call.processor(InactivityMonitor)
        assert call.call.outcome == CallOutcome.IDLE
    assert reprompts(call) == []


def test_bad_settings_are_named(pipeline_file: WritePipeline) -> None:
    with pytest.raises(ConfigError) as late:
        load_pipeline(pipeline(pipeline_file, after=30, idle=20), registry=registry)
    assert "reprompt_after_secs (30) must be less than idle_timeout_secs (20)" in str(late.value)
    with pytest.raises(ConfigError, match="call.max_reprompts"):
        load_pipeline(pipeline(pipeline_file, most=0), registry=registry)
    no_tts = pipeline_file(
        """
name: no-tts
transport: acs
call: {reprompt_after_secs: 5}
processors:
  - stt: {provider: fake}
  - echo
"""
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(no_tts, registry=registry)
    text = str(error.value)
    assert "call.reprompt_after_secs: the reprompt is spoken by the pipeline's tts" in text
