"""Per-turn latency: the stages, listeners, the log line, metrics, barge-ins, errors.

Unit tests feed the observer frames by hand with pipeline-clock timestamps (as an output
transport's pipeline would); the harness tests run real calls on the virtual clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory
from telemetry_support import observe, speak

from voicebot.telemetry import CallObserver, Metrics, Telemetry, TurnLatency
from voicebot.telemetry.turns import split
from voicebot.testing import (
    CallHarness,
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeTTSParams,
)

MS = 1_000_000  # ns
DOWN = FrameDirection.DOWNSTREAM


class Feeder:
    """Pushes frames at an observer as a pipeline would, at pipeline-clock times in ms."""

    def __init__(self, observer: CallObserver) -> None:
        self.observer = observer
        self.source = FrameProcessor(name="source")

    async def __call__(self, at_ms: float, frame: Frame, direction: FrameDirection = DOWN) -> None:
        data = FramePushed(self.source, self.source, frame, direction, round(at_ms * MS))
        await self.observer.on_push_frame(data)

    async def turn(
        self, t: float, *, stt: float = 150, llm: float = 300, tts: float = 150
    ) -> float:
        """A caller turn whose speech ends at ``t`` ms; returns when the bot's audio went out."""
        await self(t + 200, VADUserStoppedSpeakingFrame(stop_secs=0.2))
        await self(t + 200 + stt, TranscriptionFrame("hi", "caller", ""))
        llm_at = t + 200 + 200  # the user turn's speech timeout
        await self(llm_at, LLMFullResponseStartFrame())
        await self(llm_at + llm, LLMTextFrame("Hello."))
        await self(llm_at + llm, LLMFullResponseEndFrame())
        await self(llm_at + llm + 5, TTSStartedFrame(context_id="c"))
        first = llm_at + llm + 5 + tts
        await self(first, TTSAudioRawFrame(b"\0\0" * 320, 16000, 1, context_id="c"))
        await self(first + 7, BotStartedSpeakingFrame())  # the output transport sent it
        return first + 7


def test_split_tiles_the_turn_and_later_stages_win_overlaps() -> None:
    parts = split(
        0, 1000, [("vad", -50, 200), ("stt", 200, 350), ("llm", 300, 700), ("tts", 800, 1200)]
    )
    assert parts == {"vad": 200, "stt": 100, "llm": 400, "tools": 0, "tts": 200, "overhead": 100}
    assert sum(parts.values()) == 1000
    assert split(0, 10, []) == {"vad": 0, "stt": 0, "llm": 0, "tools": 0, "tts": 0, "overhead": 10}


async def test_output_transport_turn_runs_to_bot_started_speaking_on_the_pipeline_clock() -> None:
    metrics = Metrics()
    seen: list[TurnLatency] = []
    observer = CallObserver("c1", metrics=metrics, listeners=[seen.append])
    feed = Feeder(observer)
    await feed(0, StartFrame())
    await feed(1000, InputAudioRawFrame(b"\0\0" * 320, 16000, 1))
    answered = await feed.turn(1000)
    observer.finish("completed")

    (turn,) = seen
    assert turn.voice_to_voice_ms == answered - 1000 == 862
    assert turn.stages_ms == {
        "vad": 200,
        "stt": 150,
        "llm": 300,
        "tools": 0,
        "tts": 150,
        "overhead": 62,
    }
    assert observer.turns == seen
    assert metrics.registry.get_sample_value(
        "voicebot_voice_to_voice_seconds_sum"
    ) == pytest.approx(0.862)


async def test_caller_resuming_before_the_answer_extends_the_turn() -> None:
    observer = CallObserver("c1")
    feed = Feeder(observer)
    await feed(1200, VADUserStoppedSpeakingFrame(stop_secs=0.2))  # a pause, speech ended at 1000
    await feed(1300, VADUserStartedSpeakingFrame(start_secs=0.2))  # ... and goes on
    await feed.turn(2000)
    (turn,) = observer.turns
    assert turn.turn == 1 and turn.voice_to_voice_ms == 862


async def test_listeners_log_line_and_metrics_for_each_turn() -> None:
    telemetry = Telemetry()
    process_wide: list[TurnLatency] = []
    remove = telemetry.add_turn_listener(process_wide.append)
    per_call: list[int] = []

    async def slow_listener(latency: TurnLatency) -> None:
        per_call.append(latency.turn)

    def broken(latency: TurnLatency) -> None:
        raise RuntimeError("listener bug")

    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: lines.append(m.record["extra"]), filter=lambda r: "turn_latency" in r["extra"]
    )
    try:
        observer = telemetry.call("c2")
        observer.listeners += [broken, slow_listener]
        feed = Feeder(observer)
        await feed(0, StartFrame())
        await feed.turn(1000)
        await feed(5000, BotStoppedSpeakingFrame())
        await feed.turn(6000, llm=500)
        observer.finish("completed")
    finally:
        logger.remove(sink)
    remove()

    assert [t.turn for t in process_wide] == per_call == [1, 2]
    assert [line["turn_latency"]["voice_to_voice_ms"] for line in lines] == [862, 1062]
    assert lines[1]["call_id"] == "c2" and lines[1]["turn_latency"]["llm_ms"] == 500
    text = telemetry.metrics.render().decode()
    assert 'voicebot_turns_total{answered="true"} 2.0' in text
    assert 'voicebot_turn_stage_seconds_count{stage="overhead"} 2.0' in text
    assert 'voicebot_calls_total{outcome="completed"} 1.0' in text
    assert "voicebot_active_calls 0.0" in text


async def test_barge_in_unanswered_turn_and_errors_are_counted() -> None:
    metrics = Metrics()
    observer = CallObserver("c3", metrics=metrics)
    feed = Feeder(observer)
    await feed.turn(1000)
    await feed(2000, VADUserStartedSpeakingFrame(start_secs=0.2))  # over the bot: a barge-in
    await feed(2000, VADUserStartedSpeakingFrame(start_secs=0.2), FrameDirection.UPSTREAM)
    await feed(2000, InterruptionFrame())
    await feed(2500, VADUserStoppedSpeakingFrame(stop_secs=0.2))  # never answered
    llm = FakeLLMService(params=FakeLLMParams())
    await feed(
        2600,
        ErrorFrame("rate limited", processor=llm, category=ErrorCategory.RATE_LIMIT),
        FrameDirection.UPSTREAM,
    )
    await feed(2700, VADUserStartedSpeakingFrame(start_secs=0.2))  # the bot is not speaking
    observer.finish("error")

    text = metrics.render().decode()
    assert "voicebot_barge_ins_total 1.0" in text
    assert 'voicebot_turns_total{answered="false"} 1.0' in text
    assert 'voicebot_errors_total{category="rate_limit",source="llm"} 1.0' in text
    assert 'voicebot_calls_total{outcome="error"} 1.0' in text


async def test_tts_audio_does_not_answer_before_the_output_transport_sends_it() -> None:
    observer = CallObserver("c4")
    feed = Feeder(observer)
    await feed(1200, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await feed(1300, TTSStartedFrame(context_id="c"))
    await feed(1400, TTSAudioRawFrame(b"\0\0" * 320, 16000, 1, context_id="c"))
    assert observer.turns == []
    await feed(1430, BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
    assert observer.turns == []
    await feed(1450, BotStartedSpeakingFrame())
    assert [(t.voice_to_voice_ms, t.tts_ms, t.overhead_ms) for t in observer.turns] == [
        (450, 100, 150)
    ]
    await feed(1500, TTSStoppedFrame(context_id="c"))


async def test_a_harness_call_breakdown_sums_to_voice_to_voice_exactly(scripted: Path) -> None:
    telemetry = Telemetry()
    harness = CallHarness(
        scripted,
        stt=FakeSTTParams(transcripts=["What is my balance?"], final_delay_ms=150),
        llm=FakeLLMParams(replies=["Your balance is 42 dollars."], ttft_ms=300),
        tts=FakeTTSParams(first_byte_ms=150),
    )
    observer = observe(harness, telemetry)
    async with harness as call:
        spoke_until = await speak(call)
        first_audio = await call.wait_for(TTSAudioRawFrame)
        await call.wait(3)
    observer.finish(call.call.outcome)

    (turn,) = observer.turns
    # after the VAD's stop: the 200 ms speech timeout, the LLM's first token, four more tokens
    # 10 ms apart to finish the sentence, the TTS's first byte
    assert turn.stages_ms == {
        "vad": 200,
        "stt": 150,
        "llm": 300,
        "tools": 0,
        "tts": 150,
        "overhead": 50 + 40,
    }
    assert turn.voice_to_voice_ms == pytest.approx(sum(turn.stages_ms.values()), abs=1e-9)
    assert turn.voice_to_voice_ms == pytest.approx((first_audio.at - spoke_until) * 1000, abs=1e-6)
