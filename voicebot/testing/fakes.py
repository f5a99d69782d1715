"""Scripted STT, LLM and TTS services with declared timings, for pipeline tests.

Each service is a real pipecat service (``STTService``, ``LLMService``, ``TTSService``) whose
provider is a script: what it says and how long it takes are declared in a pydantic params model,
the same model a pipeline YAML fills in under ``provider: fake``. Durations are in milliseconds
(fields named ``*_ms``); delays are measured on the event loop's clock (``loop.time()``), so under
:func:`voicebot.testing.clock.virtual_time` a call with seconds of declared latency runs in
milliseconds and every event lands exactly on its declared time.

pipecat's own metrics (TTFB, processing time) read the wall clock (``time.time()``), so under
virtual time they report the real time spent, close to zero, not the declared delays.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
from collections.abc import AsyncGenerator
from typing import Any, cast

import numpy as np
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VAD_STOP_SECS
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallFromLLM,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601
from pydantic import BaseModel, ConfigDict, Field

from voicebot.services.conversation import unset_llm_settings

__all__ = [
    "FakeLLMParams",
    "FakeLLMService",
    "FakeSTTParams",
    "FakeSTTService",
    "FakeTTSParams",
    "FakeTTSService",
    "ScriptedReply",
    "ScriptedToolCall",
    "ScriptedTranscript",
]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


# --------------------------------------------------------------------------------------------
# STT
# --------------------------------------------------------------------------------------------


class ScriptedTranscript(BaseModel):
    """One final transcript, optionally with its own latency."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The final transcript of one utterance.")
    delay_ms: float | None = Field(
        default=None,
        ge=0,
        description="Milliseconds from the end of speech to this transcript; "
        "None uses FakeSTTParams.final_delay_ms.",
    )


class FakeSTTParams(BaseModel):
    """What the fake STT hears: one scripted transcript per utterance, in order."""

    model_config = ConfigDict(extra="forbid")

    transcripts: list[str | ScriptedTranscript] = Field(
        default_factory=list,
        description="Final transcripts, one per end of speech, in order.",
    )
    final_delay_ms: float = Field(
        default=150,
        ge=0,
        description="Milliseconds from the end of the user's speech to the final transcript.",
    )
    interim: bool = Field(
        default=True,
        description="Emit an interim transcript with the utterance's first word when "
        "speech starts.",
    )
    language: str = Field(default="en-US", description="Language tag put on transcripts.")
    user_id: str = Field(default="caller", description="user_id put on transcripts.")

    def script(self) -> list[ScriptedTranscript]:
        """The transcripts with plain strings expanded to ``ScriptedTranscript``."""
        return [ScriptedTranscript(text=t) if isinstance(t, str) else t for t in self.transcripts]


class FakeSTTService(STTService):
    """An STT that transcribes each utterance as the next scripted transcript.

    It consumes audio like a real streaming STT (``InputAudioRawFrame``, passed through
    downstream) and segments speech on the VAD frames pipecat's ``VADProcessor`` (or a
    transport with a VAD) emits: ``VADUserStartedSpeakingFrame`` and
    ``VADUserStoppedSpeakingFrame``. At each end of speech it pushes the next scripted
    ``TranscriptionFrame`` (``finalized=True``) ``delay_ms`` later, without holding up other
    frames; a transcript never overtakes an earlier one. Without VAD frames in the pipeline
    nothing is ever transcribed. A muted STT (``STTMuteFrame``) hears nothing and spends no
    transcript. Unless given, ``ttfs_p99_latency`` (s) is reported as pipecat's default VAD
    ``stop_secs`` plus the largest declared delay, since pipecat counts it from the end of
    speech, which the VAD reports ``stop_secs`` late.

    Transcripts still due when the pipeline ends (``EndFrame``) are delivered before the end
    goes on; a ``CancelFrame`` drops them. An interruption does not: the caller's words were
    said, and a real STT would still deliver them.

    Attributes:
        emitted: Texts of the final transcripts pushed so far, in order.
        audio_bytes: Bytes of input audio (16-bit PCM) consumed so far.
    """

    caller_audio_lane = True
    """Caller audio is handled as by ``STTService`` (see :mod:`voicebot.build.lane`)."""

    def __init__(self, *, params: FakeSTTParams, **kwargs: Any) -> None:
        """Build the service from its script.

        Args:
            params: The script and its timings.
            **kwargs: Forwarded to ``STTService`` (e.g. ``sample_rate``, ``audio_passthrough``).
        """
        script = params.script()
        delays_ms = [params.final_delay_ms] + [t.delay_ms for t in script if t.delay_ms is not None]
        # pipecat measures TTFS from the end of speech, which the VAD reports stop_secs late.
        kwargs.setdefault("ttfs_p99_latency", VAD_STOP_SECS + max(delays_ms) / 1000)
        super().__init__(settings=STTSettings(model="fake", language=params.language), **kwargs)
        self._params = params
        self._script = script
        self._cursor = 0
        self._exhausted_logged = False
        try:
            self._language: Language | None = Language(params.language)
        except ValueError:
            self._language = None
        # (due loop time in s, text), drained in order by one task; None ends it.
        self._due: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
        self._emitter: asyncio.Task[None] | None = None
        self.emitted: list[str] = []
        self.audio_bytes = 0

    def can_generate_metrics(self) -> bool:
        """Report TTFB (end of speech to final transcript) like a real STT."""
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Consume audio; transcripts come from the script, not from the audio."""
        self.audio_bytes += len(audio)
        yield None

    async def start(self, frame: StartFrame) -> None:
        """Start the task that delivers due transcripts."""
        await super().start(frame)
        self._emitter = self.create_task(self._emit_due_transcripts(), "emit_transcripts")

    async def stop(self, frame: EndFrame) -> None:
        """Deliver the transcripts still due, then stop."""
        if self._emitter is not None:
            self._due.put_nowait(None)
            await self._emitter
            self._emitter = None
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once, dropping transcripts still due."""
        await self._cancel_emitter()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Release the emitter task if the pipeline never ended it."""
        await super().cleanup()
        await self._cancel_emitter()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle frames like any STT, and schedule a transcript at each end of speech."""
        await super().process_frame(frame, direction)
        if self.is_muted:
            return
        if isinstance(frame, VADUserStartedSpeakingFrame):
            await self._speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speech_stopped()

    async def _speech_started(self) -> None:
        if not self._params.interim or self._cursor >= len(self._script):
            return
        words = self._script[self._cursor].text.split()
        if words:
            await self.push_frame(
                InterimTranscriptionFrame(
                    text=words[0],
                    user_id=self._params.user_id,
                    timestamp=time_now_iso8601(),
                    language=self._language,
                )
            )

    def _speech_stopped(self) -> None:
        if self._cursor >= len(self._script):
            if not self._exhausted_logged:
                logger.warning(f"{self}: transcript script exhausted, transcribing nothing more")
                self._exhausted_logged = True
            return
        item = self._script[self._cursor]
        self._cursor += 1
        delay_ms = self._params.final_delay_ms if item.delay_ms is None else item.delay_ms
        self._due.put_nowait((_loop_time() + delay_ms / 1000, item.text))

    async def _emit_due_transcripts(self) -> None:
        while (item := await self._due.get()) is not None:
            due, text = item
            wait = due - _loop_time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.emitted.append(text)
            await self.push_frame(
                TranscriptionFrame(
                    text=text,
                    user_id=self._params.user_id,
                    timestamp=time_now_iso8601(),
                    language=self._language,
                    finalized=True,
                )
            )
            await self.emit_stt_usage_metrics()

    async def _cancel_emitter(self) -> None:
        if self._emitter is not None:
            await self.cancel_task(self._emitter)
            self._emitter = None


# --------------------------------------------------------------------------------------------
# LLM
# --------------------------------------------------------------------------------------------


class ScriptedToolCall(BaseModel):
    """A tool call the fake LLM makes, run through pipecat's function-calling machinery."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name of the function, as registered with register_function.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments (JSON).")


class ScriptedReply(BaseModel):
    """One LLM response: text to stream, then tool calls to make."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(default="", description="Text streamed as LLMTextFrame chunks.")
    tool_calls: list[ScriptedToolCall] = Field(
        default_factory=list, description="Tool calls made after the text."
    )
    ttft_ms: float | None = Field(
        default=None,
        ge=0,
        description="Milliseconds to the first token; None uses FakeLLMParams.ttft_ms.",
    )


class FakeLLMParams(BaseModel):
    """What the fake LLM answers: one scripted reply per request, in order."""

    model_config = ConfigDict(extra="forbid")

    replies: list[str | ScriptedReply] = Field(
        default_factory=list, description="Replies, one per LLM request, in order."
    )
    ttft_ms: float = Field(
        default=300, ge=0, description="Milliseconds from the request to the first token."
    )
    token_interval_ms: float = Field(
        default=10, ge=0, description="Milliseconds between streamed text chunks."
    )
    chunk_words: int = Field(default=1, ge=1, description="Words per streamed text chunk.")

    def script(self) -> list[ScriptedReply]:
        """The replies with plain strings expanded to ``ScriptedReply``."""
        return [ScriptedReply(text=r) if isinstance(r, str) else r for r in self.replies]


def _chunks(text: str, words: int) -> list[str]:
    """Split text into chunks of ``words`` words, keeping every character of ``text``."""
    tokens = re.findall(r"\s*\S+\s*", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


class FakeLLMService(LLMService):
    """An LLM that answers each ``LLMContextFrame`` with the next scripted reply.

    A reply is ``LLMFullResponseStartFrame``, then after ``ttft_ms`` the text as ``LLMTextFrame``
    chunks of ``chunk_words`` words every ``token_interval_ms``, then the tool calls, then
    ``LLMFullResponseEndFrame``. Tool calls go through ``run_function_calls`` like a real
    LLM's, so handlers registered with ``register_function`` run, the assistant aggregator
    writes the call and its result into the context, and a follow-up request arrives here.

    Replies stream from a task of their own, one request at a time in arrival order, so other
    frames keep flowing meanwhile. An ``InterruptionFrame`` cancels the reply in progress and
    drops the requests waiting behind it; an ``EndFrame`` lets them finish first; a
    ``CancelFrame`` drops everything. A request that finds the script exhausted is recorded,
    logged and left unanswered (no frames at all).

    Attributes:
        requests: For every request received, a deep copy of the context's standard
            (dict) messages at the time it was answered.
    """

    def __init__(self, *, params: FakeLLMParams, **kwargs: Any) -> None:
        """Build the service from its script.

        Args:
            params: The script and its timings.
            **kwargs: Forwarded to ``LLMService`` (e.g. ``run_in_parallel``).
        """
        settings = unset_llm_settings("fake")
        super().__init__(settings=settings, **kwargs)
        self._params = params
        self._script = params.script()
        self._cursor = 0
        self._calls = 0
        self._exhausted_logged = False
        self._pending: asyncio.Queue[LLMContext | None] = asyncio.Queue()
        self._replier: asyncio.Task[None] | None = None
        self.requests: list[list[dict[str, Any]]] = []

    def can_generate_metrics(self) -> bool:
        """Report TTFB and processing time like a real LLM."""
        return True

    async def start(self, frame: StartFrame) -> None:
        """Start the task that answers requests."""
        await super().start(frame)
        self._start_replier()

    async def stop(self, frame: EndFrame) -> None:
        """Answer the requests already received, then stop."""
        if self._replier is not None:
            self._pending.put_nowait(None)
            await self._replier
            self._replier = None
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once, dropping the reply in progress."""
        await super().cancel(frame)
        await self._cancel_replier()

    async def cleanup(self) -> None:
        """Release the reply task if the pipeline never ended it."""
        await super().cleanup()
        await self._cancel_replier()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Queue context frames for an answer, cancel on interruption, pass the rest on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self._pending.put_nowait(frame.context)
        elif isinstance(frame, InterruptionFrame):
            await self._cancel_replier()
            self._start_replier()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _start_replier(self) -> None:
        self._pending = asyncio.Queue()
        self._replier = self.create_task(self._answer_requests(), "answer_requests")

    async def _cancel_replier(self) -> None:
        if self._replier is not None:
            await self.cancel_task(self._replier)
            self._replier = None

    async def _answer_requests(self) -> None:
        while (context := await self._pending.get()) is not None:
            await self._answer(context)

    async def _answer(self, context: LLMContext) -> None:
        self.requests.append(
            copy.deepcopy(
                [cast(dict[str, Any], m) for m in context.get_messages() if isinstance(m, dict)]
            )
        )
        if self._cursor >= len(self._script):
            if not self._exhausted_logged:
                logger.warning(f"{self}: reply script exhausted, answering nothing more")
                self._exhausted_logged = True
            return
        reply = self._script[self._cursor]
        self._cursor += 1
        ttft_ms = self._params.ttft_ms if reply.ttft_ms is None else reply.ttft_ms

        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        await asyncio.sleep(ttft_ms / 1000)
        await self.stop_ttfb_metrics()
        for i, chunk in enumerate(_chunks(reply.text, self._params.chunk_words)):
            if i:
                await asyncio.sleep(self._params.token_interval_ms / 1000)
            await self._push_llm_text(chunk)
        if reply.tool_calls:
            await self.run_function_calls([self._tool_call(c, context) for c in reply.tool_calls])
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())

    def _tool_call(self, call: ScriptedToolCall, context: LLMContext) -> FunctionCallFromLLM:
        self._calls += 1
        return FunctionCallFromLLM(
            function_name=call.name,
            tool_call_id=f"fake_call_{self._calls}",
            arguments=copy.deepcopy(call.arguments),
            context=context,
        )


# --------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------


class FakeTTSParams(BaseModel):
    """How the fake TTS speaks: a tone whose length is declared per character."""

    model_config = ConfigDict(extra="forbid")

    first_byte_ms: float = Field(
        default=150, ge=0, description="Milliseconds from the request to the first audio."
    )
    ms_per_char: float = Field(
        default=50, gt=0, description="Milliseconds of audio per character of text."
    )
    chunk_ms: float = Field(default=40, gt=0, description="Milliseconds of audio per frame.")
    tone_hz: float = Field(default=440.0, ge=0, description="Tone frequency in Hz; 0 is silence.")
    voice: str = Field(default="fake", description="Voice name reported in the settings.")


class FakeTTSService(TTSService):
    """A TTS that speaks each text as a tone of declared length.

    ``run_tts`` waits ``first_byte_ms``, then yields ``TTSAudioRawFrame``s of 16-bit mono PCM
    at the pipeline's output sample rate (``self.sample_rate``, Hz), ``chunk_ms`` each (the
    last one shorter), ``round(len(text) * ms_per_char * sample_rate / 1000)`` samples in all,
    i.e. twice that many bytes. After the first byte all frames come at once; pacing them in
    real time is the output transport's job. The same text always gives the same bytes.
    ``text`` is what the base class hands to ``run_tts``: one sentence at a time with the
    default sentence aggregation, each sentence waiting ``first_byte_ms`` in turn (the base
    class synthesizes inline, as with pipecat's HTTP TTS services).

    Attributes:
        spoken: Texts synthesized so far, in order.
    """

    AMPLITUDE = 0.2
    """Peak of the tone, as a fraction of 16-bit full scale."""

    def __init__(self, *, params: FakeTTSParams, **kwargs: Any) -> None:
        """Build the service.

        Args:
            params: Timings and sound.
            **kwargs: Forwarded to ``TTSService`` (e.g. ``sample_rate``,
                ``text_aggregation_mode``).
        """
        kwargs.setdefault("push_start_frame", True)
        kwargs.setdefault("push_stop_frames", True)
        super().__init__(
            settings=TTSSettings(model="fake", voice=params.voice, language=None), **kwargs
        )
        self._params = params
        self.spoken: list[str] = []

    def can_generate_metrics(self) -> bool:
        """Report TTFB and processing time like a real TTS."""
        return True

    def audio_for(self, text: str, sample_rate: int) -> bytes:
        """The exact audio (16-bit mono PCM bytes) ``run_tts`` yields for ``text``."""
        samples = round(len(text) * self._params.ms_per_char * sample_rate / 1000)
        if self._params.tone_hz == 0:
            return bytes(2 * samples)
        t = np.arange(samples, dtype=np.float64) / sample_rate
        wave = np.sin(2 * math.pi * self._params.tone_hz * t) * (self.AMPLITUDE * 32767)
        return wave.astype("<i2").tobytes()

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Wait for the first byte, then yield the whole tone in ``chunk_ms`` frames."""
        self.spoken.append(text)
        await self.start_tts_usage_metrics(text)
        await asyncio.sleep(self._params.first_byte_ms / 1000)
        rate = self.sample_rate
        audio = self.audio_for(text, rate)
        step = 2 * max(1, round(self._params.chunk_ms * rate / 1000))
        for offset in range(0, len(audio), step):
            yield TTSAudioRawFrame(
                audio=audio[offset : offset + step],
                sample_rate=rate,
                num_channels=1,
                context_id=context_id,
            )
