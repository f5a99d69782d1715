"""ObserverGroup: several observers in one pipecat slot, each told what it asked for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipecat.frames.frames import Frame, TextFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.observers import (
    ObserverGroup,
    filter_worker_observer,
    frames_wanted,
    grouped,
)


class Recording(BaseObserver):
    def __init__(self, *, every: bool, fail: bool = False) -> None:
        super().__init__(observe_every_push=every)
        self.pushed: list[bool] = []
        self.fail = fail
        self.started = 0

    async def on_push_frame(self, data: FramePushed) -> None:
        self.pushed.append(data.first_push)
        if self.fail:
            raise RuntimeError("observer bug")

    async def on_pipeline_started(self) -> None:
        self.started += 1


class Processing(BaseObserver):
    def __init__(self) -> None:
        super().__init__()
        self.processed = 0

    async def on_process_frame(self, data: FrameProcessed) -> None:
        self.processed += 1


def _push(first: bool) -> FramePushed:
    a, b = FrameProcessor(), FrameProcessor()
    return FramePushed(a, b, TextFrame("hi"), FrameDirection.DOWNSTREAM, 0, first_push=first)


async def test_each_member_gets_the_pushes_it_asked_for() -> None:
    every, first = Recording(every=True), Recording(every=False)
    group = ObserverGroup([first, every])
    assert group.observe_every_push
    for flag in (True, False, False, True):
        await group.on_push_frame(_push(flag))
    assert every.pushed == [True, False, False, True]
    assert first.pushed == [True, True]


async def test_first_push_only_members_make_a_first_push_only_group() -> None:
    group = ObserverGroup([Recording(every=False), Recording(every=False)])
    assert not group.observe_every_push


async def test_a_failing_member_does_not_stop_the_others() -> None:
    bad, good = Recording(every=True, fail=True), Recording(every=True)
    group = ObserverGroup([bad, good])
    await group.on_push_frame(_push(True))
    assert good.pushed == [True]
    await group.on_pipeline_started()
    assert (bad.started, good.started) == (1, 1)


async def test_process_events_go_only_to_members_that_handle_them() -> None:
    processing, pushing = Processing(), Recording(every=True)
    group = ObserverGroup([processing, pushing])
    assert group._processed == [processing]
    await group.on_process_frame(
        FrameProcessed(FrameProcessor(), TextFrame("x"), FrameDirection.DOWNSTREAM, 0)
    )
    assert processing.processed == 1


@pytest.mark.parametrize("count", [0, 1, 3])
def test_grouped(count: int) -> None:
    observers = [Recording(every=False) for _ in range(count)]
    result = grouped(observers)
    if count > 1:
        assert len(result) == 1 and isinstance(result[0], ObserverGroup)
        assert result[0].observers == observers
    else:
        assert result == observers


class Typed(Recording):
    frame_types = (TextFrame,)


def test_frames_wanted_is_the_union_or_none() -> None:
    from pipecat.frames.frames import TranscriptionFrame

    class Transcripts(Recording):
        frame_types = (TranscriptionFrame, TextFrame)

    assert frames_wanted([Typed(every=False), Transcripts(every=False)]) == (
        TextFrame,
        TranscriptionFrame,
    )
    assert frames_wanted([Typed(every=False), Recording(every=False)]) is None
    group = ObserverGroup([Typed(every=False), Typed(every=True)])
    assert group.frame_types == (TextFrame,)
    assert frames_wanted([group]) == (TextFrame,)


async def test_a_worker_passes_its_observers_only_the_frames_they_declare() -> None:
    """A real pipeline: the filtered observer sees its text frames and none of the audio."""
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    class Seen(BaseObserver):
        frame_types = (TextFrame,)

        def __init__(self) -> None:
            super().__init__(observe_every_push=False)
            self.kinds: list[str] = []

        async def on_push_frame(self, data: FramePushed) -> None:
            self.kinds.append(type(data.frame).__name__)

    class Passing(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    seen = Seen()
    worker = PipelineWorker(
        Pipeline([Passing(), Passing()]),
        observers=[seen],
        enable_rtvi=False,
        enable_turn_tracking=False,
    )
    assert filter_worker_observer(worker)
    audio = InputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1)
    await worker.queue_frames([audio, TextFrame("hello"), audio, TextFrame("bye"), EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(runner.run(), 10)
    # Frames pass when any observer of the worker wants them (pipecat's idle observer wants the
    # StartFrame); caller audio, which none wants, never reaches the observers' queue.
    assert seen.kinds.count("TextFrame") == 2
    assert "InputAudioRawFrame" not in seen.kinds


async def test_members_are_set_up_with_the_groups_task_manager() -> None:
    from pipecat.utils.asyncio.task_manager import TaskManager

    class SetUp(Recording):
        manager: object = None

        async def setup(self, task_manager: Any) -> None:
            await super().setup(task_manager)
            self.manager = task_manager

    a, b = SetUp(every=False), SetUp(every=True)
    manager = TaskManager()
    await ObserverGroup([a, b]).setup(manager)
    assert a.manager is manager and b.manager is manager


async def test_a_push_gate_keeps_frames_out_unless_another_observer_wants_them() -> None:
    """A real pipeline: a gated observer gets the frames its gate lets through; an ungated
    member of the same group still gets what it declares; the gate sees every push."""
    from pipecat.frames.frames import EndFrame, TranscriptionFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    class Gated(BaseObserver):
        frame_types = (TextFrame,)

        def __init__(self) -> None:
            super().__init__(observe_every_push=False)
            self.asked: list[str] = []
            self.seen: list[str] = []

        def push_gate(self, frame: Frame) -> bool:
            assert isinstance(frame, TextFrame)
            self.asked.append(frame.text)
            return frame.text.startswith("keep")

        async def on_push_frame(self, data: FramePushed) -> None:
            assert isinstance(data.frame, TextFrame)
            self.seen.append(data.frame.text)

    class Transcripts(BaseObserver):
        frame_types = (TranscriptionFrame,)

        def __init__(self) -> None:
            super().__init__(observe_every_push=False)
            self.seen: list[str] = []

        async def on_push_frame(self, data: FramePushed) -> None:
            if isinstance(data.frame, TranscriptionFrame):  # a group passes what any wants
                self.seen.append(data.frame.text)

    class Passing(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    gated, transcripts = Gated(), Transcripts()
    group = ObserverGroup([gated, transcripts])
    assert hasattr(group, "push_gate") and not hasattr(ObserverGroup([transcripts]), "push_gate")
    worker = PipelineWorker(
        Pipeline([Passing(), Passing()]),
        observers=[group],
        enable_rtvi=False,
        enable_turn_tracking=False,
    )
    assert filter_worker_observer(worker)
    said = TranscriptionFrame("said", "u", "t")  # a TextFrame the ungated member wants
    frames = [TextFrame("keep 1"), TextFrame("drop"), said, TextFrame("keep 2"), EndFrame()]
    await worker.queue_frames(frames)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(runner.run(), 10)

    assert gated.seen == ["keep 1", "said", "keep 2"]  # "said" passed for the other member
    assert transcripts.seen == ["said"]
    # asked at every push of each frame, in order
    assert [t for i, t in enumerate(gated.asked) if t not in gated.asked[:i]] == [
        "keep 1", "drop", "said", "keep 2"
    ]  # fmt: skip
    assert gated.asked.count("drop") >= 2  # every hop through the pipeline


def test_the_call_observer_lets_through_only_the_first_tts_chunk_of_each_answer() -> None:
    from pipecat.frames.frames import (
        OutputAudioRawFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )

    from voicebot.telemetry.observer import CallObserver

    def tts() -> TTSAudioRawFrame:
        return TTSAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1)

    def out() -> OutputAudioRawFrame:
        return OutputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1)

    observer = CallObserver("c1")
    frames: list[Frame] = [tts(), TTSStartedFrame(), tts(), tts(), out(), TTSStoppedFrame()]
    frames += [TTSStartedFrame(), out(), tts(), tts()]
    passed = [observer.push_gate(f) for f in frames]
    assert passed == [False, True, True, False, False, True, True, False, True, False]
    # without an output transport (tests, offline simulation) the first bot audio marks the
    # answer: no gate at all
    assert not hasattr(CallObserver("c2", output_transport=False), "push_gate")
