"""The WebSocket transport a call runs on: pipecat's FastAPI transport, minus a hop per frame.

pipecat's input transport puts every inbound audio frame on a queue of its own, for a task that
takes it off again (waiting with a timeout, a new timer per frame) and pushes it on. That hop
serves audio filters, which may hold audio back; a call without one gains nothing from it, and it
costs a queue put, a task wake-up and a timer for each of the 50 frames a second of every call.
:class:`CallWebsocketTransport` pushes a call's audio downstream straight from the socket's
receive loop instead, in arrival order; with an ``audio_in_filter`` set it keeps pipecat's queue.
Given a :class:`~voicebot.build.lane.CallerAudioLane` (the builder gives one where it can), it
hands the audio to the lane rather than to the next processor's queue.
"""

from __future__ import annotations

from fastapi import WebSocket
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketInputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

from voicebot.build.lane import CallerAudioLane


class DirectAudioInputTransport(FastAPIWebsocketInputTransport):
    """An input transport that pushes audio frames on from the receive loop, without a queue.

    Frames arriving before the transport is ready, after it stopped, or while it is paused are
    dropped, as pipecat's queue would drop them.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._direct = self._params.audio_in_enabled and self._params.audio_in_filter is None
        self._audio_open = False
        self._lane: CallerAudioLane | None = None

    def set_caller_audio_lane(self, lane: CallerAudioLane | None) -> None:
        """Hand caller audio to ``lane`` (None: push it downstream)."""
        self._lane = lane

    def _create_audio_task(self) -> None:
        # Where pipecat starts its audio queue's task (transport ready, resumed): open instead.
        if self._direct:
            self._audio_open = True
        else:
            super()._create_audio_task()

    async def _cancel_audio_task(self) -> None:
        # Where pipecat cancels that task (paused, stopped, cancelled, cleaned up): close.
        self._audio_open = False
        await super()._cancel_audio_task()

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        """Push ``frame`` downstream now (with a filter set: through pipecat's audio queue)."""
        if not self._direct:
            await super().push_audio_frame(frame)
        elif self._audio_open and not self._paused and frame.audio:
            lane = self._lane
            if lane is None:
                await self.push_frame(frame)
            elif lane.open:
                await lane.push(frame)
            # else: the pipeline has not started yet (or has ended); pipecat's queue would
            # hold the frame until the StartFrame has passed, here it is dropped


class CallWebsocketTransport(FastAPIWebsocketTransport):
    """pipecat's ``FastAPIWebsocketTransport`` with a :class:`DirectAudioInputTransport`."""

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams) -> None:
        super().__init__(websocket, params)
        self._input = DirectAudioInputTransport(
            self, self._client, self._params, name=self._input.name
        )
