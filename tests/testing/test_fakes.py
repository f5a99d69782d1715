from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    STTMuteFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pydantic import ValidationError

from voicebot.testing.clock import virtual_time
from voicebot.testing.fakes import (
    FakeLLMParams,
    FakeLLMService,
    FakeSTTParams,
    FakeSTTService,
    FakeTTSParams,
    FakeTTSService,
    ScriptedReply,
    ScriptedToolCall,
    ScriptedTranscript,
)
from voicebot.testing.tasks import no_leaked_tasks

AUDIO_20MS = InputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1)


class Tap(FrameProcessor):
    """Records every downstream frame passing it, with the loop time, without queueing it."""

    def __init__(self, log: Timeline, tag: str) -> None:
        super().__init__(enable_direct_mode=True)
        self._log = log
        self._tag = tag

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self._log.entries.append((asyncio.get_running_loop().time(), self._tag, frame))
        await self.push_frame(frame, direction)


class Timeline:
    """(loop time in s, tap tag, frame) of frames seen by the taps, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, Frame]] = []

    def tap(self, tag: str) -> Tap:
        return Tap(self, tag)

    def frames(self, tag: str, kind: type[Frame]) -> Iterator[tuple[float, Any]]:
        return ((t, f) for t, g, f in self.entries if g == tag and isinstance(f, kind))

    def times(self, tag: str, kind: type[Frame]) -> list[float]:
        return [t for t, _ in self.frames(tag, kind)]

    def first(self, tag: str, kind: type[Frame]) -> tuple[float, Any]:
        return next(self.frames(tag, kind))

    def kinds(self, tag: str, ignore: Sequence[type[Frame]] = ()) -> list[str]:
        return [
            type(f).__name__
            for _, g, f in self.entries
            if g == tag and not isinstance(f, tuple(ignore))
        ]


def exactly(seconds: float) -> Any:
    return pytest.approx(seconds, abs=1e-6)


async def run_timed(
    processor: FrameProcessor, frames: Sequence[Frame], **kwargs: Any
) -> tuple[Timeline, list[Frame]]:
    """Run ``processor`` between an ``in`` and an ``out`` tap, on virtual time."""
    timeline = Timeline()
    pipeline = Pipeline([timeline.tap("in"), processor, timeline.tap("out")])
    async with virtual_time():
        down, _ = await run_test(pipeline, frames_to_send=frames, **kwargs)
    return timeline, list(down)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


# ---------------------------------------------------------------------------------------- STT


async def test_stt_transcribes_each_utterance_a_declared_delay_after_speech_ends() -> None:
    stt = FakeSTTService(
        params=FakeSTTParams(
            transcripts=["hello there", ScriptedTranscript(text="second one", delay_ms=400)]
        )
    )
    frames: list[Frame] = [VADUserStartedSpeakingFrame()]
    for _ in range(5):
        frames += [AUDIO_20MS, SleepFrame(0.02)]
    frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(1.0)]
    frames += [VADUserStartedSpeakingFrame(), AUDIO_20MS, SleepFrame(0.5)]
    frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(1.0)]

    timeline, _ = await run_timed(stt, frames)

    starts = timeline.times("in", VADUserStartedSpeakingFrame)
    stops = timeline.times("in", VADUserStoppedSpeakingFrame)
    finals = list(timeline.frames("out", TranscriptionFrame))
    assert [f.text for _, f in finals] == ["hello there", "second one"]
    assert finals[0][0] == exactly(stops[0] + 0.150)
    assert finals[1][0] == exactly(stops[1] + 0.400)
    for _, frame in finals:
        assert frame.finalized
        assert frame.user_id == "caller"
        assert frame.language == Language.EN_US
    interims = list(timeline.frames("out", InterimTranscriptionFrame))
    assert [(t, f.text) for t, f in interims] == [(starts[0], "hello"), (starts[1], "second")]
    assert stt.emitted == ["hello there", "second one"]
    assert stt.audio_bytes == 6 * 640
    assert len(timeline.times("out", InputAudioRawFrame)) == 6


async def test_stt_without_vad_frames_transcribes_nothing() -> None:
    stt = FakeSTTService(params=FakeSTTParams(transcripts=["never said"]))
    timeline, _ = await run_timed(stt, [AUDIO_20MS, SleepFrame(2.0), AUDIO_20MS])
    assert timeline.times("out", TranscriptionFrame) == []
    assert stt.emitted == []
    assert stt.audio_bytes == 2 * 640


async def test_stt_logs_once_and_stays_silent_when_the_script_runs_out(
    warnings: list[str],
) -> None:
    stt = FakeSTTService(params=FakeSTTParams(transcripts=["only one"], interim=False))
    utterance = [VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(), SleepFrame(0.5)]
    timeline, _ = await run_timed(stt, utterance * 3)
    assert [f.text for _, f in timeline.frames("out", TranscriptionFrame)] == ["only one"]
    assert timeline.times("out", InterimTranscriptionFrame) == []
    assert len([m for m in warnings if "script exhausted" in m]) == 1


async def test_stt_delivers_a_pending_transcript_before_the_pipeline_ends() -> None:
    stt = FakeSTTService(params=FakeSTTParams(transcripts=["last words"], final_delay_ms=300))
    timeline, _ = await run_timed(
        stt, [VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame()]
    )
    (stop,) = timeline.times("in", VADUserStoppedSpeakingFrame)
    assert timeline.first("out", TranscriptionFrame)[0] == exactly(stop + 0.3)
    assert timeline.kinds("out")[-2:] == ["TranscriptionFrame", "EndFrame"]


async def test_muted_stt_hears_nothing_and_keeps_its_script() -> None:
    stt = FakeSTTService(params=FakeSTTParams(transcripts=["first", "second"]))
    frames = [
        STTMuteFrame(mute=True),
        VADUserStartedSpeakingFrame(),
        VADUserStoppedSpeakingFrame(),
        SleepFrame(0.5),
        STTMuteFrame(mute=False),
        VADUserStartedSpeakingFrame(),
        VADUserStoppedSpeakingFrame(),
        SleepFrame(0.5),
    ]
    await run_timed(stt, frames)
    assert stt.emitted == ["first"]


def test_stt_params_read_yaml_shapes_and_reject_unknown_keys() -> None:
    params = FakeSTTParams.model_validate(
        {"transcripts": ["hi", {"text": "slow", "delay_ms": 900}], "final_delay_ms": 120}
    )
    assert [(t.text, t.delay_ms) for t in params.script()] == [("hi", None), ("slow", 900)]
    with pytest.raises(ValidationError, match="final_delay"):
        FakeSTTParams.model_validate({"final_delay": 100})
    with pytest.raises(ValidationError):
        FakeSTTParams.model_validate({"final_delay_ms": -1})


# ---------------------------------------------------------------------------------------- LLM


def _context() -> LLMContext:
    return LLMContext(messages=[{"role": "user", "content": "What's the weather?"}])


async def test_llm_streams_the_reply_after_time_to_first_token() -> None:
    llm = FakeLLMService(
        params=FakeLLMParams(
            replies=["It is sunny and warm today."],
            ttft_ms=300,
            token_interval_ms=20,
            chunk_words=2,
        )
    )
    context = _context()
    timeline, _ = await run_timed(llm, [LLMContextFrame(context=context), SleepFrame(1.0)])

    sent = timeline.times("in", LLMContextFrame)[0]
    assert timeline.first("out", LLMFullResponseStartFrame)[0] == exactly(sent)
    chunks = list(timeline.frames("out", LLMTextFrame))
    assert [f.text for _, f in chunks] == ["It is ", "sunny and ", "warm today."]
    assert [t - sent for t, _ in chunks] == [exactly(0.3), exactly(0.32), exactly(0.34)]
    assert timeline.first("out", LLMFullResponseEndFrame)[0] == exactly(sent + 0.34)
    assert llm.requests == [[{"role": "user", "content": "What's the weather?"}]]


async def test_llm_lets_other_frames_through_while_it_streams() -> None:
    llm = FakeLLMService(params=FakeLLMParams(replies=["Some answer."]))
    frames = [LLMContextFrame(context=_context()), TextFrame("meanwhile"), SleepFrame(1.0)]
    timeline, _ = await run_timed(llm, frames)
    sent = timeline.times("in", LLMContextFrame)[0]
    passed = [t for t, f in timeline.frames("out", TextFrame) if f.text == "meanwhile"]
    assert passed == [exactly(sent)]
    assert timeline.first("out", LLMTextFrame)[0] == exactly(sent + 0.3)


async def test_llm_reply_can_override_time_to_first_token() -> None:
    llm = FakeLLMService(params=FakeLLMParams(replies=[ScriptedReply(text="Quick.", ttft_ms=50)]))
    timeline, _ = await run_timed(llm, [LLMContextFrame(context=_context()), SleepFrame(1.0)])
    sent = timeline.times("in", LLMContextFrame)[0]
    assert timeline.first("out", LLMTextFrame)[0] == exactly(sent + 0.05)


async def test_llm_interruption_cancels_the_reply_in_progress() -> None:
    llm = FakeLLMService(
        params=FakeLLMParams(replies=["one two three four five six", "Fresh answer."])
    )
    frames = [
        LLMContextFrame(context=_context()),
        SleepFrame(0.325),
        InterruptionFrame(),
        SleepFrame(1.0),
        LLMContextFrame(context=_context()),
        SleepFrame(1.0),
    ]
    timeline, _ = await run_timed(llm, frames)
    texts = [f.text for _, f in timeline.frames("out", LLMTextFrame)]
    assert texts == ["one ", "two ", "three ", "Fresh ", "answer."]
    assert len(timeline.times("out", LLMFullResponseStartFrame)) == 2
    assert len(timeline.times("out", LLMFullResponseEndFrame)) == 1
    assert len(llm.requests) == 2


async def test_llm_records_but_does_not_answer_once_the_script_runs_out(
    warnings: list[str],
) -> None:
    llm = FakeLLMService(params=FakeLLMParams(replies=["Only answer."]))
    frames = [LLMContextFrame(context=_context()), SleepFrame(1.0)] * 2
    timeline, _ = await run_timed(llm, frames)
    assert len(llm.requests) == 2
    assert len(timeline.times("out", LLMFullResponseStartFrame)) == 1
    assert len([m for m in warnings if "script exhausted" in m]) == 1


async def test_llm_tool_call_runs_the_handler_and_the_follow_up_sees_its_result() -> None:
    context = _context()
    _, assistant = LLMContextAggregatorPair(context)
    llm = FakeLLMService(
        params=FakeLLMParams(
            replies=[
                ScriptedReply(
                    text="Let me check.",
                    tool_calls=[ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})],
                ),
                "It is sunny in Paris.",
            ]
        )
    )
    calls: list[tuple[float, dict[str, Any]]] = []

    async def get_weather(params: FunctionCallParams) -> None:
        calls.append((asyncio.get_running_loop().time(), dict(params.arguments)))
        await asyncio.sleep(0.2)
        await params.result_callback({"sky": "sunny"})

    llm.register_function("get_weather", get_weather)
    timeline = Timeline()
    pipeline = Pipeline([timeline.tap("in"), llm, timeline.tap("out"), assistant])
    async with virtual_time():
        await run_test(pipeline, frames_to_send=[LLMContextFrame(context=context), SleepFrame(2)])

    sent = timeline.times("in", LLMContextFrame)[0]
    assert calls == [(exactly(sent + 0.32), {"city": "Paris"})]
    assert len(llm.requests) == 2
    *_, call, result = llm.requests[1]
    assert call["role"] == "assistant"
    assert call["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert result == {
        "role": "tool",
        "content": json.dumps({"sky": "sunny"}),
        "tool_call_id": call["tool_calls"][0]["id"],
    }
    second_answer = [t for t, f in timeline.frames("out", LLMTextFrame) if f.text == "It "]
    assert second_answer == [exactly(sent + 0.32 + 0.2 + 0.3)]


# ---------------------------------------------------------------------------------------- TTS


@pytest.mark.parametrize("sample_rate", [24000, 16000])
async def test_tts_speaks_the_declared_length_after_the_first_byte(sample_rate: int) -> None:
    tts = FakeTTSService(params=FakeTTSParams(first_byte_ms=150, ms_per_char=50, chunk_ms=40))
    text = "Hello there."
    timeline, _ = await run_timed(
        tts,
        [TTSSpeakFrame(text), SleepFrame(2.0)],
        pipeline_params=PipelineParams(audio_out_sample_rate=sample_rate),
    )
    sent = timeline.times("in", TTSSpeakFrame)[0]
    audio = list(timeline.frames("out", TTSAudioRawFrame))
    samples = round(len(text) * 50 * sample_rate / 1000)
    assert sum(len(f.audio) for _, f in audio) == 2 * samples
    chunk_bytes = 2 * round(40 * sample_rate / 1000)
    assert [len(f.audio) for _, f in audio[:-1]] == [chunk_bytes] * (len(audio) - 1)
    assert {f.sample_rate for _, f in audio} == {sample_rate}
    assert audio[0][0] == exactly(sent + 0.15)
    assert timeline.first("out", TTSStartedFrame)[0] == exactly(sent)
    assert timeline.first("out", TTSStoppedFrame)[0] >= audio[-1][0]
    assert tts.spoken == [text]


async def test_tts_audio_is_deterministic() -> None:
    tts = FakeTTSService(params=FakeTTSParams())
    runs = []
    for _ in range(2):
        timeline, _ = await run_timed(tts, [TTSSpeakFrame("Same words."), SleepFrame(2.0)])
        runs.append(b"".join(f.audio for _, f in timeline.frames("out", TTSAudioRawFrame)))
    assert runs[0] == runs[1] == tts.audio_for("Same words.", 24000)
    assert max(runs[0]) > 0
    silent = FakeTTSService(params=FakeTTSParams(tone_hz=0))
    assert silent.audio_for("Same words.", 24000) == bytes(2 * 13200)


# ----------------------------------------------------------------------------------- Pipeline


async def test_a_whole_turn_runs_on_declared_timings() -> None:
    """STT 150 ms, turn end 200 ms after speech, tool call, LLM 300 ms, TTS first byte 150 ms."""
    context = LLMContext(messages=[{"role": "system", "content": "Be brief."}])
    user, assistant = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)]
            )
        ),
    )
    stt = FakeSTTService(params=FakeSTTParams(transcripts=["What's the weather in Paris?"]))
    llm = FakeLLMService(
        params=FakeLLMParams(
            replies=[
                ScriptedReply(tool_calls=[ScriptedToolCall(name="get_weather")]),
                "Sunny.",
            ]
        )
    )
    tts = FakeTTSService(params=FakeTTSParams())

    async def get_weather(params: FunctionCallParams) -> None:
        await params.result_callback({"sky": "sunny"})

    llm.register_function("get_weather", get_weather)
    timeline = Timeline()
    pipeline = Pipeline([stt, timeline.tap("stt"), user, llm, tts, timeline.tap("tts"), assistant])
    frames: list[Frame] = [VADUserStartedSpeakingFrame()]
    for _ in range(50):
        frames += [AUDIO_20MS, SleepFrame(0.02)]
    frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(3.0)]

    async with no_leaked_tasks(), virtual_time() as clock:
        await run_test(pipeline, frames_to_send=frames)
        wall = clock.now()

    (stop,) = timeline.times("stt", VADUserStoppedSpeakingFrame)
    assert timeline.first("stt", TranscriptionFrame)[0] == exactly(stop + 0.15)
    # Turn end at +0.2, tool call at +0.5, answer streamed from +0.8, spoken from +0.95.
    audio = list(timeline.frames("tts", TTSAudioRawFrame))
    assert audio[0][0] == exactly(stop + 0.2 + 0.3 + 0.3 + 0.15)
    assert sum(len(f.audio) for _, f in audio) == 2 * round(len("Sunny.") * 50 * 24)
    assert [len(r) for r in llm.requests] == [2, 4]
    assert llm.requests[1][-1]["content"] == json.dumps({"sky": "sunny"})
    assert context.get_messages()[-1] == {"role": "assistant", "content": "Sunny."}
    assert tts.spoken == ["Sunny."]
    assert wall == exactly(1.0 + 3.0)
    assert isinstance(timeline.entries[-1][2], EndFrame)
