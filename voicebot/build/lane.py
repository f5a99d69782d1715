"""The caller-audio lane: each 20 ms caller frame through the VAD and the STT in one call.

In a pipecat pipeline every frame a processor pushes is put on the next processor's queue and
taken off by that processor's task, with its observer callbacks and event handlers around it. For
the 50 caller frames a second of every call, that is the largest share of a call's CPU: the frame
goes transport → VAD → STT → :class:`~voicebot.build.builder.CallerAudioStop`, two queue hops
and task wake-ups, only for the STT to buffer or stream it and the stop to drop it.

When the processors before the call's ``CallerAudioStop`` are all ones whose handling of caller
audio is known — pipecat's ``VADProcessor`` and STT services that treat audio as
``STTService`` does — the call's transport hands each caller frame to a
:class:`CallerAudioLane` instead, which does what those processors would do with it, in the same
order, on the transport's own task: the VAD passes the frame on and then analyses it (its speech
events still travel the pipeline as frames); the STT transcribes it
(``process_audio_frame``) and, with ``audio_passthrough``, passes it on; the stop drops it.
Every other frame takes the pipeline's normal path. A pipeline with any other processor there
(a custom one, an echo) keeps the normal path for audio too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.stt_service import SegmentedSTTService, STTService

#: ``process_frame`` implementations that treat caller audio exactly as ``STTService`` does
#: (they handle other frames and call the base class for audio). An STT class whose
#: ``process_frame`` is not listed here keeps the normal path; one of ours opts in with
#: ``caller_audio_lane = True`` on the class that defines its ``process_frame``.
_STT_AUDIO_AS_BASE = {STTService.process_frame, SegmentedSTTService.process_frame}


class AcceptsCallerAudioLane(Protocol):
    """A transport input that can hand caller audio to a lane."""

    def set_caller_audio_lane(self, lane: CallerAudioLane | None) -> None: ...


@runtime_checkable
class CallerAudioEnd(Protocol):
    """The processor where caller audio stops (``CallerAudioStop``)."""

    ends_caller_audio: bool

    @property
    def running(self) -> bool:
        """Whether the pipeline's StartFrame has passed it, and no EndFrame or CancelFrame."""
        ...


class CallerAudioLane:
    """Caller audio through a call's VAD and STT without their queues (see the module doc)."""

    def __init__(self, steps: Sequence[FrameProcessor], stop: CallerAudioEnd) -> None:
        self._steps = tuple(steps)
        self._stop = stop
        self.frames = 0
        """Frames taken through the lane (for tests)."""

    @classmethod
    def of(cls, processors: Sequence[FrameProcessor]) -> CallerAudioLane | None:
        """The lane for a call's processors, or None where audio must take the normal path."""
        steps: list[FrameProcessor] = []
        for processor in processors:
            if isinstance(processor, CallerAudioEnd):
                return cls(steps, processor) if steps else None
            if not lane_safe(processor):
                return None
            steps.append(processor)
        return None  # no stop: audio travels the whole pipeline

    @property
    def open(self) -> bool:
        """Whether the pipeline has started (and not ended): the lane may be used."""
        return self._stop.running

    async def push(self, frame: InputAudioRawFrame) -> None:
        """Do with ``frame`` what the lane's processors would do with it, in order."""
        self.frames += 1
        await self._step(0, frame)

    async def _step(self, index: int, frame: InputAudioRawFrame) -> None:
        if index == len(self._steps):
            return  # the stop: caller audio goes no further
        processor = self._steps[index]
        if processor._cancelling:
            return
        try:
            if isinstance(processor, VADProcessor):
                # As VADProcessor.process_frame: the frame goes on first, then the analysis.
                await self._step(index + 1, frame)
                await processor._vad_controller.process_frame(frame)
                return
            stt: STTService = processor  # type: ignore[assignment]
            await stt.process_audio_frame(frame, FrameDirection.DOWNSTREAM)
            passes_on = stt._audio_passthrough
        except Exception as exc:  # as pipecat's frame processing does: an error frame
            logger.debug(f"{processor}: caller audio failed: {exc!r}")
            await processor.push_error(error_msg=f"Error processing frame: {exc}", exception=exc)
            return
        if passes_on:
            await self._step(index + 1, frame)


def lane_safe(processor: FrameProcessor) -> bool:
    """Whether ``processor`` handles caller audio as the lane does."""
    if isinstance(processor, VADProcessor):
        return type(processor).process_frame is VADProcessor.process_frame
    if isinstance(processor, STTService):
        method = type(processor).process_frame
        if method in _STT_AUDIO_AS_BASE:
            return True
        owner = next(c for c in type(processor).__mro__ if "process_frame" in c.__dict__)
        return bool(owner.__dict__.get("caller_audio_lane", False))
    return False


def attach_lane(input: FrameProcessor | None, processors: Sequence[FrameProcessor]) -> None:
    """Give ``input`` the lane of ``processors`` if it takes one (and there is one)."""
    setter = getattr(input, "set_caller_audio_lane", None)
    if setter is not None:
        setter(CallerAudioLane.of(processors))
