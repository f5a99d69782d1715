"""One pipecat observer slot for all of a call's observers.

pipecat gives every observer of a call its own queue and task: each frame a processor pushes or
processes is put on every observer's queue, and every observer's task wakes up for it. On a
phone call that is 50 audio frames a second through every processor, times the observers. An
:class:`ObserverGroup` takes one slot and calls its members in turn from that one task, so the
cost of observing is paid once whatever the number of observers.

Members are called in order and awaited one after another, so a slow member delays the others
(as it would delay itself in its own slot); one that raises is logged and the rest still run.
"""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger
from pipecat.observers.base_observer import (
    BaseObserver,
    FrameProcessed,
    FramePushed,
    ProcessorSetUp,
)


class ObserverGroup(BaseObserver):
    """Observers that share one pipecat observer slot (see the module docstring)."""

    def __init__(self, observers: Sequence[BaseObserver]) -> None:
        every = [o for o in observers if o.observe_every_push]
        super().__init__(observe_every_push=bool(every))
        self.observers = list(observers)
        self._every_push = every
        self._first_push = [o for o in observers if not o.observe_every_push]
        self._processed = [o for o in observers if _overrides(o, "on_process_frame")]

    async def on_push_frame(self, data: FramePushed) -> None:
        for observer in self._every_push:
            await self._call(observer, observer.on_push_frame, data)
        if data.first_push:
            for observer in self._first_push:
                await self._call(observer, observer.on_push_frame, data)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        for observer in self._processed:
            await self._call(observer, observer.on_process_frame, data)

    async def on_processor_setup(self, data: ProcessorSetUp) -> None:
        for observer in self.observers:
            await self._call(observer, observer.on_processor_setup, data)

    async def on_pipeline_started(self) -> None:
        for observer in self.observers:
            await self._call(observer, observer.on_pipeline_started)

    async def cleanup(self) -> None:
        await super().cleanup()
        for observer in self.observers:
            await self._call(observer, observer.cleanup)

    @staticmethod
    async def _call(observer: BaseObserver, method: object, *args: object) -> None:
        try:
            await method(*args)  # type: ignore[operator]
        except Exception as exc:
            logger.exception(f"observer {observer} failed: {exc!r}")


def _overrides(observer: BaseObserver, name: str) -> bool:
    """Whether ``observer``'s class implements ``name`` itself rather than inheriting a no-op."""
    return getattr(type(observer), name) is not getattr(BaseObserver, name)


def grouped(observers: Sequence[BaseObserver]) -> list[BaseObserver]:
    """``observers`` as one :class:`ObserverGroup` when there are several."""
    return [ObserverGroup(observers)] if len(observers) > 1 else list(observers)
