"""One pipecat observer slot for all of a call's observers.

pipecat gives every observer of a call its own queue and task: each frame a processor pushes or
processes is put on every observer's queue, and every observer's task wakes up for it. On a
phone call that is 50 audio frames a second through every processor, times the observers. An
:class:`ObserverGroup` takes one slot and calls its members in turn from that one task, so the
cost of observing is paid once whatever the number of observers.

Members are called in order and awaited one after another, so a slow member delays the others
(as it would delay itself in its own slot); one that raises is logged and the rest still run.

Most frames interest no observer: a call's 50 caller-audio frames a second are looked at by none
of voicebot's. An observer that declares the frames it handles (a ``frame_types`` tuple) lets
:func:`filter_worker_observer` drop every other frame before pipecat queues it — no event object
kept, no queue, no task woken. Observers that declare nothing see every frame, as in pipecat.

An observer that needs a frequent frame only now and then (the first bot audio chunk of an
answer, not the 50 a second after it) also gives a ``push_gate(frame) -> bool``: it is called
as each frame of a declared type is pushed, before anything is queued, and a frame it answers
False for is not queued for it (unless another observer of the call wants it: a group passes its
members every frame one of them wants, and each ignores what it does not handle). The gate runs
at push time, ahead of the observer's own task, so it must keep what it decides on itself (it
sees every push of its types, in order).
"""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger
from pipecat.frames.frames import Frame, StartFrame
from pipecat.observers.base_observer import (
    BaseObserver,
    FrameProcessed,
    FramePushed,
    ProcessorSetUp,
)
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.utils.asyncio.task_manager import BaseTaskManager

FrameTypes = tuple[type[Frame], ...]


class ObserverGroup(BaseObserver):
    """Observers that share one pipecat observer slot (see the module docstring)."""

    def __init__(self, observers: Sequence[BaseObserver]) -> None:
        every = [o for o in observers if o.observe_every_push]
        super().__init__(observe_every_push=bool(every))
        self.observers = list(observers)
        self._every_push = every
        self._first_push = [o for o in observers if not o.observe_every_push]
        self._processed = [o for o in observers if _overrides(o, "on_process_frame")]
        self.frame_types = frames_wanted(observers)
        """The frames some member handles, or None when a member takes every frame."""
        gates = PushGates(observers)
        if gates:  # a group is gated only if some member is
            self.push_gate = gates

    @property
    def handles_processing(self) -> bool:
        """Whether some member looks at frames being processed, not only pushed."""
        return bool(self._processed)

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

    async def setup(self, task_manager: BaseTaskManager) -> None:
        await super().setup(task_manager)
        for observer in self.observers:  # as pipecat's proxy would have, one slot each
            await observer.setup(task_manager)

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


class PushGates:
    """The push gates of some observers: whether one of them wants a frame now.

    True for a frame an observer without a gate wants by its type, or that a gate of an observer
    wanting the type lets through. Every such gate is asked, whatever the others say, so each
    sees every push of its types. False (as a whole) when no observer has a gate.
    """

    def __init__(self, observers: Sequence[BaseObserver]) -> None:
        gated = [o for o in observers if hasattr(o, "push_gate")]
        self._gates = [(o.push_gate, frames_wanted([o])) for o in gated]
        self._ungated = frames_wanted([o for o in observers if not hasattr(o, "push_gate")])
        self._always: dict[type[Frame], bool] = {}

    def __bool__(self) -> bool:
        return bool(self._gates)

    def __call__(self, frame: Frame) -> bool:
        kind = type(frame)
        always = self._always.get(kind)
        if always is None:
            ungated = self._ungated
            always = self._always[kind] = ungated is None or issubclass(kind, ungated)
        passed = always
        for gate, types in self._gates:
            if types is None or isinstance(frame, types):
                passed = gate(frame) or passed
        return passed


def _overrides(observer: BaseObserver, name: str) -> bool:
    """Whether ``observer``'s class implements ``name`` itself rather than inheriting a no-op."""
    return getattr(type(observer), name) is not getattr(BaseObserver, name)


def grouped(observers: Sequence[BaseObserver]) -> list[BaseObserver]:
    """``observers`` as one :class:`ObserverGroup` when there are several."""
    return [ObserverGroup(observers)] if len(observers) > 1 else list(observers)


def frames_wanted(observers: Sequence[BaseObserver]) -> FrameTypes | None:
    """The frame types any of ``observers`` handles; None if one of them takes every frame."""
    wanted: list[type[Frame]] = []
    for observer in observers:
        if isinstance(observer, IdleFrameObserver):  # pipecat's own, for the idle timeout
            types: FrameTypes | None = (StartFrame, *observer._idle_timeout_frames)
        else:
            types = getattr(observer, "frame_types", None)
        if types is None:
            return None
        wanted.extend(t for t in types if t not in wanted)
    return tuple(wanted)


def _handles_processing(observer: BaseObserver) -> bool:
    if isinstance(observer, ObserverGroup):
        return observer.handles_processing
    return _overrides(observer, "on_process_frame")


class FilteringWorkerObserver(WorkerObserver):
    """pipecat's per-call observer proxy, passing on only the frames its observers handle."""

    def __init__(self, *, observers: list[BaseObserver], wanted: FrameTypes | None) -> None:
        super().__init__(observers=observers)
        self._wanted = wanted
        self._wants: dict[type[Frame], bool] = {}
        self._processing = any(_handles_processing(o) for o in observers)
        self._gates = PushGates(observers)

    def _wanted_frame(self, frame: Frame) -> bool:
        kind = type(frame)
        wants = self._wants.get(kind)
        if wants is None:
            wants = self._wants[kind] = self._wanted is None or issubclass(kind, self._wanted)
        return wants

    async def on_push_frame(self, data: FramePushed) -> None:
        if self._wanted_frame(data.frame) and (not self._gates or self._gates(data.frame)):
            await super().on_push_frame(data)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        if self._processing and self._wanted_frame(data.frame):
            await super().on_process_frame(data)


def filter_worker_observer(worker: PipelineWorker) -> bool:
    """Give ``worker`` a :class:`FilteringWorkerObserver` in place of its observer proxy.

    Call before the worker runs. Returns False (and changes nothing) if the worker's proxy is
    not pipecat's plain ``WorkerObserver`` as of pipecat 1.14.
    """
    current = getattr(worker, "_observer", None)
    if type(current) is not WorkerObserver:
        return False
    observers: list[BaseObserver] = list(getattr(current, "_observers", []))
    worker._observer = FilteringWorkerObserver(observers=observers, wanted=frames_wanted(observers))
    return True
