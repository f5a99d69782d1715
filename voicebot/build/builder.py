"""PipelineSpec → pipecat objects, once per call.

Every call gets fresh processor instances; only what factories take from
:class:`~voicebot.services.resources.SharedResources` is shared between calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker, ProcessorUnusablePolicy
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.context import BuildContext, Built
from voicebot.build.kinds import FrameKind
from voicebot.build.lane import attach_lane
from voicebot.build.loader import PipelineSpec
from voicebot.build.observers import filter_worker_observer, grouped
from voicebot.build.registry import as_built
from voicebot.services.resources import SharedResources

if TYPE_CHECKING:
    from voicebot.processors.inactivity import InactivityMonitor

#: How long cancelling a call's pipeline may take before its tasks are cancelled hard, in s.
CANCEL_TIMEOUT_SECS = 1.5


async def warm_up(
    spec: PipelineSpec, resources: SharedResources, timeout_secs: float = 120
) -> None:
    """Load every provider's shared resources now (models, clients), off the event loop.

    A server calls this at start-up so its first call does not wait for models to load. A
    provider that fails to warm up is logged and left to fail its calls with a clear error.
    """
    for step in spec.steps:
        warm = step.provider.warm
        if warm is None:
            continue
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(warm, step.params, resources), timeout_secs)
        except Exception as exc:
            logger.error(f"warming up {step.name} ({step.provider.name}) failed: {exc!r}")
            continue
        elapsed = time.perf_counter() - started
        logger.info(f"warmed up {step.name} ({step.provider.name}) in {elapsed:.2f} s")


class CallerAudioStop(FrameProcessor):
    """Drops caller audio (``InputAudioRawFrame``) going downstream; passes everything else.

    Placed after the last processor that consumes caller audio, so the 50 audio frames a second
    of every call do not travel through the aggregators, LLM, TTS and output transport that
    ignore them. Runs in direct mode: no queue and no task of its own.
    """

    ends_caller_audio = True
    """Marks the end of a :class:`~voicebot.build.lane.CallerAudioLane`."""

    def __init__(self) -> None:
        super().__init__(name="caller-audio-stop", enable_direct_mode=True)
        self._running = False

    @property
    def running(self) -> bool:
        """Whether the StartFrame has passed (every processor before it has started) and no
        EndFrame or CancelFrame yet."""
        return self._running

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame):
            return
        if isinstance(frame, StartFrame):
            self._running = True
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._running = False
        await self.push_frame(frame, direction)


class BotAudioStop(FrameProcessor):
    """Drops bot audio (``OutputAudioRawFrame``, TTS audio included) going downstream past the
    transport output; passes everything else.

    The output transport passes on every 20 ms chunk it has sent; after it come only the
    assistant aggregators, which ignore audio. Runs in direct mode: no queue, no task. Observers
    still see each chunk leave the transport output.
    """

    def __init__(self) -> None:
        super().__init__(name="bot-audio-stop", enable_direct_mode=True)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, OutputAudioRawFrame):
            return
        await self.push_frame(frame, direction)


def last_audio_consumer(spec: PipelineSpec) -> int | None:
    """Index of the last step that may read caller audio (its kinds say so, or are unknown)."""
    found = None
    for i, step in enumerate(spec.steps):
        consumes = step.spec.consumes
        if consumes is None or FrameKind.AUDIO_IN in consumes:
            found = i
    return found


def build_processors(spec: PipelineSpec, context: BuildContext) -> Built:
    """Instantiate every step of ``spec`` for one call, in order.

    Caller audio stops after the last step that consumes it (:class:`CallerAudioStop`), unless
    that step is the last one. The call's :class:`InactivityMonitor` (if ``call:`` asks for
    reprompts) goes there too: no caller audio reaches it, speech events and transcripts do.
    """
    out = Built([])
    stop_after = last_audio_consumer(spec)
    monitor = inactivity_monitor(spec)
    if monitor is not None and stop_after is None:
        out.processors.append(monitor)
    for i, step in enumerate(spec.steps):
        built = as_built(step.provider.factory(step.params, context))
        out.processors.extend(built.processors)
        out.tail.extend(built.tail)
        if i == stop_after and i < len(spec.steps) - 1:
            out.processors.append(CallerAudioStop())
        if i == stop_after and monitor is not None:
            out.processors.append(monitor)
    return out


def inactivity_monitor(spec: PipelineSpec) -> InactivityMonitor | None:
    """A fresh reprompt timer for one call, or None if the pipeline's ``call:`` has none."""
    call = spec.call
    if call.reprompt_after_secs is None:
        return None
    # Importing voicebot.processors imports modules that import this one: import it late.
    from voicebot.processors.inactivity import InactivityMonitor

    return InactivityMonitor(
        after_secs=call.reprompt_after_secs,
        text=call.reprompt_text,
        max_reprompts=call.max_reprompts,
    )


def build_pipeline(
    spec: PipelineSpec,
    context: BuildContext,
    *,
    input: FrameProcessor | None = None,
    output: FrameProcessor | None = None,
) -> Pipeline:
    """``input → processors → output → tail`` as one pipecat :class:`Pipeline`.

    Bot audio stops after the output where the tail is assistant aggregators only
    (:class:`BotAudioStop`).

    ``input``/``output`` are the call's transport processors (or a test's source and sink).
    An input that takes a :class:`~voicebot.build.lane.CallerAudioLane` is given the call's.
    """
    built = build_processors(spec, context)
    attach_lane(input, built.processors)
    chain: list[FrameProcessor] = []
    if input is not None:
        chain.append(input)
    chain.extend(built.processors)
    if output is not None:
        chain.append(output)
        if built.tail and all(isinstance(p, LLMAssistantAggregator) for p in built.tail):
            chain.append(BotAudioStop())
    chain.extend(built.tail)
    return Pipeline(chain)


def build_worker(
    spec: PipelineSpec,
    pipeline: Pipeline,
    *,
    call_id: str,
    observers: Sequence[BaseObserver] = (),
    enable_metrics: bool = True,
) -> PipelineWorker:
    """A :class:`PipelineWorker` set up for a phone call.

    No RTVI (there is no RTVI client on a phone line); idle handling from the pipeline's
    ``call:`` section: with no speech from either side for ``idle_timeout_secs`` the call ends.
    A processor that can no longer work (e.g. a rejected API key) ends the call gracefully, so
    what is already queued (an apology) still plays.

    The call's observers share one slot (:func:`~voicebot.build.observers.grouped`) and see only
    the frames they declare (:func:`~voicebot.build.observers.filter_worker_observer`).
    """
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=spec.audio.in_rate,
            audio_out_sample_rate=spec.audio.out_rate,
            enable_metrics=enable_metrics,
        ),
        enable_rtvi=False,
        enable_turn_tracking=False,
        conversation_id=call_id,
        idle_timeout_secs=spec.call.idle_timeout_secs,
        cancel_on_idle_timeout=spec.call.idle_timeout_secs is not None,
        cancel_runner_on_idle_timeout=False,
        cancel_timeout_secs=CANCEL_TIMEOUT_SECS,
        processor_unusable_policy=ProcessorUnusablePolicy.END,
        observers=grouped(observers),
        name=f"call-{call_id}",
    )
    if not filter_worker_observer(worker):
        logger.debug("pipecat's worker observer has changed: observers see every frame")
    return worker
