"""ObserverGroup: several observers in one pipecat slot, each told what it asked for."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import TextFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.observers import ObserverGroup, grouped


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
