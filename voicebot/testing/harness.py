"""Unit-test a pipeline from YAML with fake frames, scripted services and a virtual clock.

::

    from voicebot.testing import CallHarness, FakeLLMParams, FakeSTTParams, sample

    async def test_answers_the_balance_question():
        async with CallHarness(
            "pipelines/demo.yaml",
            stt=FakeSTTParams(transcripts=["what is my balance"], final_delay_ms=150),
            llm=FakeLLMParams(replies=["Your balance is 42 dollars."], ttft_ms=300),
        ) as call:
            spoke_until = await call.speak(sample("balance"))
            reply = await call.wait_for(TTSStartedFrame)
            assert call.replies == ["Your balance is 42 dollars."]
            assert reply.at - spoke_until == pytest.approx(0.2 + 0.15 + 0.3 + 0.15, abs=0.1)

Inside the block time is virtual (unless ``virtual_clock=False``): waits and declared latencies
take no wall-clock time, and every recorded time is exact, so a 30 s call runs in a moment and the
same test gives the same times every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import BaseModel

from voicebot.build.lane import CallerAudioLane
from voicebot.build.loader import PipelineSpec, load_pipeline
from voicebot.build.registry import Registry
from voicebot.runner import CallOutcome, CallRunner
from voicebot.services.resources import SharedResources
from voicebot.testing.clock import virtual_time
from voicebot.testing.recorder import FrameRecorder, Recorded
from voicebot.testing.tasks import no_leaked_tasks
from voicebot.testing.wav import read_wav, silence, split_frames

F = TypeVar("F", bound=Frame)
P = TypeVar("P", bound=FrameProcessor)
Match = type[Frame] | Callable[[Recorded], bool]

#: How long :meth:`CallHarness.wait_for` waits by default, in (virtual) seconds.
WAIT_TIMEOUT_SECS = 10.0


class _FirstPushObserver(BaseObserver):
    """Records each frame once, when it is first pushed, with the processor that pushed it."""

    def __init__(self, clock_origin: Callable[[], float]) -> None:
        super().__init__()
        self.records: list[tuple[Recorded, str]] = []
        self._origin = clock_origin

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.first_push:
            at = asyncio.get_running_loop().time() - self._origin()
            self.records.append((Recorded(data.frame, at, data.direction), data.source.name))


class _CallerAudioInput(FrameProcessor):
    """Where the harness's frames go in: passes frames on, and holds the call's caller-audio
    lane (:mod:`voicebot.build.lane`), which caller audio takes as on a real call's transport."""

    def __init__(self) -> None:
        super().__init__(name="harness-input", enable_direct_mode=True)
        self.lane: CallerAudioLane | None = None

    def set_caller_audio_lane(self, lane: CallerAudioLane | None) -> None:
        self.lane = lane

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class CallHarness:
    """One call through a pipeline from YAML, driven by a test.

    Services named in ``stt``/``llm``/``tts`` (or any processor in ``providers``) are switched to
    their ``fake`` provider with the given script; everything else is built as the YAML says.
    Frames go in at the pipeline's start (where the transport input would be); what reaches the
    end (the transport output) is in :attr:`output`; every frame any processor pushed is in
    :attr:`frames`. Times are seconds since the pipeline started.

    Caller audio (:meth:`speak`, :meth:`silence`) takes the path it takes on a phone call: through
    the call's caller-audio lane where the pipeline has one (see :mod:`voicebot.build.lane`),
    else through the pipeline's queues, as :meth:`send` does with any frame.
    ``caller_audio_lane=False`` sends it through the queues always.
    """

    def __init__(
        self,
        pipeline: str | Path | PipelineSpec,
        *,
        stt: BaseModel | Mapping[str, Any] | None = None,
        llm: BaseModel | Mapping[str, Any] | None = None,
        tts: BaseModel | Mapping[str, Any] | None = None,
        providers: Mapping[str, BaseModel | Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        registry: Registry | None = None,
        resources: SharedResources | None = None,
        call_id: str = "test-call",
        virtual_clock: bool = True,
        check_tasks: bool = True,
        caller_audio_lane: bool = True,
    ) -> None:
        spec = (
            pipeline
            if isinstance(pipeline, PipelineSpec)
            else load_pipeline(pipeline, env=env, registry=registry)
        )
        scripts = {"stt": stt, "llm": llm, "tts": tts, **(providers or {})}
        for name, script in scripts.items():
            if script is not None:
                spec = spec.with_provider(name, "fake", script)
        self.spec = spec
        self.rate = spec.audio.in_rate
        self._sink = FrameRecorder()
        self._observer = _FirstPushObserver(lambda: self._sink.t0)
        self._input = _CallerAudioInput()
        self._use_lane = caller_audio_lane
        self._call = CallRunner(
            spec,
            call_id=call_id,
            resources=resources,
            input=self._input,
            output=self._sink,
            observers=[self._observer],
        )
        self._virtual = virtual_clock
        self._check_tasks = check_tasks
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[CallOutcome] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._check_tasks:
            await self._stack.enter_async_context(no_leaked_tasks())
        if self._virtual:
            await self._stack.enter_async_context(virtual_time())
        self._sink.restart_clock()
        self._task = asyncio.create_task(self._call.run(), name=f"harness-{self._call.call_id}")
        try:
            await self._call.wait_started(timeout=WAIT_TIMEOUT_SECS)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> CallOutcome:
        """Hang up (if the call is still on) and wait for the call to end; returns its outcome."""
        try:
            assert self._task is not None
            if not self._task.done():
                await self._call.cancel("test finished")
            return await self._task
        finally:
            await self._stack.aclose()

    async def end(self) -> CallOutcome:
        """End the call gracefully (queued frames play out) and return its outcome."""
        assert self._task is not None
        await self._call.end("test ended the call")
        return await self._task

    @property
    def call(self) -> CallRunner:
        """The runner owning this call (worker, outcome, error)."""
        return self._call

    @property
    def caller_audio_lane(self) -> CallerAudioLane | None:
        """The call's caller-audio lane, if its pipeline has one."""
        return self._input.lane

    @property
    def now(self) -> float:
        """Seconds since the harness started the call."""
        return asyncio.get_running_loop().time() - self._sink.t0

    # -- feeding -------------------------------------------------------------------------------

    async def send(self, *frames: Frame) -> None:
        """Push frames in at the pipeline's start, as the transport input would."""
        for frame in frames:
            await self._call.queue_frame(frame)

    async def speak(self, audio: str | Path | bytes, *, frame_ms: int = 20) -> float:
        """Play caller audio (a WAV path, or PCM16 mono bytes at the input rate) in real time.

        Frames of ``frame_ms`` go in on a fixed schedule, as a phone line delivers them. Returns
        the time (s since start) just after the last frame: the end of the caller's speech.
        """
        pcm = audio if isinstance(audio, bytes) else read_wav(audio, self.rate)
        return await self._play(pcm, frame_ms)

    async def silence(self, ms: float, *, frame_ms: int = 20) -> float:
        """Play ``ms`` of silent caller audio (a phone line keeps sending frames)."""
        return await self._play(silence(ms, self.rate), frame_ms)

    async def _play(self, pcm: bytes, frame_ms: int) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, chunk in enumerate(split_frames(pcm, self.rate, frame_ms)):
            due = start + index * frame_ms / 1000
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            frame = InputAudioRawFrame(audio=chunk, sample_rate=self.rate, num_channels=1)
            lane = self._input.lane if self._use_lane else None
            if lane is not None and lane.open:
                await lane.push(frame)
            else:
                await self.send(frame)
        end = start + len(pcm) / 2 / self.rate
        if (delay := end - loop.time()) > 0:
            await asyncio.sleep(delay)
        return self.now

    async def say(self, text: str, *, user_id: str = "caller") -> None:
        """A final transcript, as if an STT had recognised ``text`` (skips audio, VAD and STT)."""
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        await self.send(TranscriptionFrame(text=text, user_id=user_id, timestamp=stamp))

    async def press(self, digits: str) -> None:
        """Keypad digits, one ``InputDTMFFrame`` each (``0-9``, ``*``, ``#``)."""
        for digit in digits:
            await self.send(InputDTMFFrame(button=KeypadEntry(digit)))

    async def wait(self, seconds: float) -> None:
        """Let the call run for ``seconds`` (virtual seconds under the virtual clock)."""
        await asyncio.sleep(seconds)

    # -- observing -----------------------------------------------------------------------------

    def processor(self, processor_type: type[P]) -> P:
        """The call's first processor of ``processor_type`` (e.g. ``FakeLLMService``)."""
        pending: list[FrameProcessor] = list(self._call.worker.pipeline.processors)
        while pending:
            candidate = pending.pop(0)
            if isinstance(candidate, processor_type):
                return candidate
            pending[:0] = [p for p in candidate.processors if p is not candidate]
        raise LookupError(f"no {processor_type.__name__} in pipeline {self.spec.name!r}")

    async def wait_for(
        self, match: Match, *, after: float | None = None, timeout: float = WAIT_TIMEOUT_SECS
    ) -> Recorded:
        """The first frame reaching the pipeline's end that ``match`` accepts.

        ``match`` is a frame class or a predicate on :class:`Recorded`; ``after`` (s) skips
        frames seen before that time. Raises TimeoutError after ``timeout`` seconds.
        """
        predicate = _predicate(match)
        since = 0 if after is None else _index_after(self._sink.records, after)
        return await self._sink.wait_for(predicate, timeout=timeout, since=since)

    @property
    def output(self) -> list[Recorded]:
        """Frames that reached the pipeline's end (what the transport would send), in order."""
        return list(self._sink.records)

    @property
    def frames(self) -> list[Recorded]:
        """Every frame pushed anywhere in the pipeline, once each, when it was first pushed."""
        return [record for record, _ in self._observer.records]

    def pushed_by(self, processor_name: str) -> list[Recorded]:
        """Frames first pushed by processors whose name starts with ``processor_name``."""
        return [r for r, source in self._observer.records if source.startswith(processor_name)]

    def of_type(
        self, frame_type: type[F], *, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> list[F]:
        """Frames of ``frame_type`` pushed anywhere in ``direction``, in order.

        pipecat broadcasts some frames (VAD, interruptions) both ways; each copy is a frame of its
        own, so asking for one direction counts each event once.
        """
        return [
            r.frame
            for r in self.frames
            if isinstance(r.frame, frame_type) and r.direction == direction
        ]

    @property
    def transcripts(self) -> list[str]:
        """The caller's final transcripts, in order."""
        return [f.text for f in self.of_type(TranscriptionFrame)]

    @property
    def replies(self) -> list[str]:
        """The LLM's complete replies, one string per response."""
        replies: list[str] = []
        current: list[str] | None = None
        for record in self.frames:
            frame = record.frame
            if isinstance(frame, LLMFullResponseStartFrame):
                current = []
            elif isinstance(frame, LLMTextFrame) and current is not None:
                current.append(frame.text)
            elif isinstance(frame, LLMFullResponseEndFrame) and current is not None:
                replies.append("".join(current).strip())
                current = None
        return replies

    @property
    def audio_out(self) -> bytes:
        """All bot audio that reached the pipeline's end, concatenated (PCM16 at the out rate)."""
        return b"".join(
            r.frame.audio for r in self._sink.records if isinstance(r.frame, OutputAudioRawFrame)
        )


def _predicate(match: Match) -> Callable[[Recorded], bool]:
    if isinstance(match, type):
        frame_type = match
        return lambda record: isinstance(record.frame, frame_type)
    return match


def _index_after(records: list[Recorded], after: float) -> int:
    for index, record in enumerate(records):
        if record.at >= after:
            return index
    return len(records)
