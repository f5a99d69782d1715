"""A pass-through processor that records every frame it sees, with the loop time it saw it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

F = TypeVar("F", bound=Frame)


@dataclass(frozen=True)
class Recorded:
    """A frame and when it passed, in seconds since the recorder's ``t0`` (loop clock)."""

    frame: Frame
    at: float
    direction: FrameDirection


class FrameRecorder(FrameProcessor):
    """Records frames flowing in ``directions`` and forwards everything unchanged.

    Times come from the event loop's clock, so under :func:`voicebot.testing.virtual_time` they are
    exact and repeatable. Waiters registered with :meth:`wait_for` wake on the first match.
    """

    def __init__(
        self,
        *,
        directions: tuple[FrameDirection, ...] = (FrameDirection.DOWNSTREAM,),
        **kwargs: Any,
    ) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._directions = directions
        self.records: list[Recorded] = []
        self.t0 = 0.0
        self._waiters: list[tuple[Callable[[Recorded], bool], asyncio.Future[Recorded]]] = []

    def restart_clock(self) -> None:
        """Count ``at`` from now."""
        self.t0 = asyncio.get_running_loop().time()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction in self._directions:
            record = Recorded(frame, asyncio.get_running_loop().time() - self.t0, direction)
            self.records.append(record)
            for match, future in list(self._waiters):
                if not future.done() and match(record):
                    future.set_result(record)
        await self.push_frame(frame, direction)

    async def wait_for(
        self,
        match: Callable[[Recorded], bool],
        *,
        timeout: float,
        since: int = 0,
    ) -> Recorded:
        """The first record from index ``since`` on that ``match`` accepts, waiting if needed."""
        for record in self.records[since:]:
            if match(record):
                return record
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        entry = (match, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.remove(entry)

    def of_type(self, frame_type: type[F]) -> list[F]:
        """Recorded frames of ``frame_type``, in order."""
        return [r.frame for r in self.records if isinstance(r.frame, frame_type)]
