"""The per-call runner: every way a call can end leaves nothing running and nothing registered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.loader import load_pipeline
from voicebot.build.registry import Registry, processor
from voicebot.runner import ActiveCalls, CallOutcome, CallRunner
from voicebot.testing.recorder import FrameRecorder
from voicebot.testing.tasks import no_leaked_tasks

ECHO = """
name: echo
transport: acs
call: {{idle_timeout_secs: {idle}, max_duration_secs: {max}}}
processors:
  - echo
{extra}
"""

registry = Registry()


@processor("hangs_on_cleanup", consumes=["audio_out"], emits=["audio_out"], registry=registry)
class HangsOnCleanup(FrameProcessor):
    """Like an SDK stuck on a dead endpoint: cleanup never returns on its own."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await asyncio.sleep(3600)


@processor("fails_on_audio", consumes=["audio_out"], emits=["audio_out"], registry=registry)
class FailsOnAudio(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            await self.push_error("the service is gone", force_treat_as_permanent=True)
        await self.push_frame(frame, direction)


@processor("broken_factory", consumes=["audio_out"], emits=["audio_out"], registry=registry)
class BrokenFactory(FrameProcessor):
    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError("cannot build")


# The test registry also knows voicebot's own processors.
from voicebot.build.registry import default_registry  # noqa: E402

for _name in default_registry().names():
    registry.add(default_registry().get(_name))


def audio() -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=b"\x01\x00" * 320, sample_rate=16000, num_channels=1)


@pytest.fixture
def make_call(
    pipeline_file: Callable[[str], Path],
) -> Callable[..., tuple[CallRunner, FrameRecorder]]:
    def make(
        *, extra: str = "", idle: str = "null", max: str = "null", active: ActiveCalls | None = None
    ) -> tuple[CallRunner, FrameRecorder]:
        spec = load_pipeline(
            pipeline_file(ECHO.format(extra=extra, idle=idle, max=max)), registry=registry
        )
        sink = FrameRecorder()
        return CallRunner(spec, call_id="c1", output=sink, active=active), sink

    return make


async def test_end_plays_out_and_leaves_nothing(make_call: Callable[..., Any]) -> None:
    active = ActiveCalls()
    async with no_leaked_tasks():
        call, sink = make_call(active=active)
        task = asyncio.create_task(call.run())
        await call.wait_started()
        assert "c1" in active
        await call.queue_frame(audio())
        await sink.wait_for(lambda r: isinstance(r.frame, OutputAudioRawFrame), timeout=2)
        await call.end()
        assert await task == CallOutcome.COMPLETED
    assert "c1" not in active


async def test_outside_cancel_ends_within_two_seconds(make_call: Callable[..., Any]) -> None:
    active = ActiveCalls()
    async with no_leaked_tasks():
        call, _ = make_call(active=active)
        task = asyncio.create_task(call.run())
        await call.wait_started()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 2.0
    assert call.outcome == CallOutcome.CANCELLED
    assert len(active) == 0


async def test_stuck_processor_cannot_hold_the_call(make_call: Callable[..., Any]) -> None:
    async with no_leaked_tasks():
        call, _ = make_call(extra="  - hangs_on_cleanup")
        task = asyncio.create_task(call.run())
        await call.wait_started()
        started = time.monotonic()
        await call.cancel("caller hung up")
        assert await task == CallOutcome.CANCELLED
        assert time.monotonic() - started < 2.0


async def test_fatal_error_ends_the_call(make_call: Callable[..., Any]) -> None:
    async with no_leaked_tasks():
        call, _ = make_call(extra="  - fails_on_audio")
        task = asyncio.create_task(call.run())
        await call.wait_started()
        await call.queue_frame(audio())
        assert await asyncio.wait_for(task, 3) == CallOutcome.ERROR
    assert call.error == "the service is gone"


async def test_build_failure_is_reported_not_raised(make_call: Callable[..., Any]) -> None:
    active = ActiveCalls()
    async with no_leaked_tasks():
        call, _ = make_call(extra="  - broken_factory", active=active)
        assert await call.run() == CallOutcome.ERROR
    assert call.error == "RuntimeError: cannot build"
    assert len(active) == 0


async def test_idle_timeout_ends_the_call(make_call: Callable[..., Any]) -> None:
    async with no_leaked_tasks():
        call, _ = make_call(idle="0.2")
        assert await asyncio.wait_for(call.run(), 3) == CallOutcome.IDLE


async def test_max_duration_ends_the_call(make_call: Callable[..., Any]) -> None:
    async with no_leaked_tasks():
        call, _ = make_call(max="0.3")
        started = time.monotonic()
        assert await asyncio.wait_for(call.run(), 3) == CallOutcome.MAX_DURATION
        assert time.monotonic() - started < 2.5


async def test_two_calls_with_one_id_are_refused(make_call: Callable[..., Any]) -> None:
    active = ActiveCalls()
    first, _ = make_call(active=active)
    second, _ = make_call(active=active)
    task = asyncio.create_task(first.run())
    await first.wait_started()
    assert await second.run() == CallOutcome.ERROR
    assert "already running" in (second.error or "")
    await first.cancel()
    await task
