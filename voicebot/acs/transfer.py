"""Carry out an agent's escalation: a ``TransferCallFrame`` becomes a Call Automation transfer."""

from __future__ import annotations

from typing import Protocol

from loguru import logger
from pipecat.observers.base_observer import BaseObserver, FramePushed

from voicebot.acs.calls import mask_party
from voicebot.agents.decisions import TransferCallFrame


class Transferrer(Protocol):
    async def transfer(self, call_id: str, to: str) -> object: ...


class TransferObserver(BaseObserver):
    """Watches one call for ``TransferCallFrame`` and asks call control to transfer it, once.

    The frame travels behind the announcement ("let me connect you…"), so the caller has been
    told before ACS moves the call. A failed transfer is logged with its reason; the call goes on.
    """

    frame_types = (TransferCallFrame,)
    """The one frame it acts on (see :mod:`voicebot.build.observers`)."""

    def __init__(self, call_id: str, calls: Transferrer) -> None:
        super().__init__(observe_every_push=False)
        self._call_id = call_id
        self._calls = calls
        self.transferred_to: str | None = None

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if not (isinstance(frame, TransferCallFrame) and data.first_push):
            return
        if self.transferred_to is not None:
            return
        self.transferred_to = frame.to
        try:
            await self._calls.transfer(self._call_id, frame.to)
        except Exception as exc:  # call control unconfigured, ACS refused, timed out
            logger.error(f"call {self._call_id}: transfer to {mask_party(frame.to)} failed: {exc}")
