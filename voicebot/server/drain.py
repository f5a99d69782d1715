"""Graceful shutdown: on SIGTERM a worker stops taking calls and lets its calls finish.

uvicorn alone, on SIGTERM, closes every WebSocket at once (1012), which would cut every caller
off mid-sentence. :class:`DrainingServer` puts a drain in front of that:

1. The first SIGTERM (or Ctrl-C) marks the worker as draining: ``/api/v1/health/ready``
   answers 503 ``draining`` so a load balancer sends no more calls, and new media streams are
   refused with 1013 (try again later) — ACS or the balancer places them on another worker.
2. The calls in progress go on until they end, for up to ``VOICEBOT_DRAIN_TIMEOUT_SECS``
   (:attr:`~voicebot.config.Settings.drain_timeout_secs`).
3. Then uvicorn shuts down as usual; calls still running at the deadline are cancelled by the
   app's lifespan. A second signal skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from loguru import logger

from voicebot.server.app import AppState

#: How often the drain looks at the number of active calls, in seconds.
POLL_SECS = 0.1


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the worker's calls before stopping."""

    def __init__(self, config: uvicorn.Config, state: AppState, timeout_secs: float) -> None:
        super().__init__(config)
        self.state = state
        self.timeout_secs = timeout_secs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            if self._drain_task is not None and not self._drain_task.done():
                self._drain_task.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining; a second one, or none possible: uvicorn's own exit."""
        first = not self.state.draining and not self.should_exit
        if first and self._loop is not None and sig in (signal.SIGTERM, signal.SIGINT):
            self._captured_signals.append(sig)  # uvicorn re-raises it once it has shut down
            self.state.draining = True
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain(), name="voicebot-drain")

    async def _drain(self) -> None:
        active = self.state.active
        if len(active):
            logger.info(
                f"draining: no new calls; waiting up to {self.timeout_secs:g} s for "
                f"{len(active)} active call(s) to end (signal again to stop now)"
            )
        deadline = time.monotonic() + self.timeout_secs
        # Polled: uvicorn's should_exit (a second signal) is a plain flag with no event to await.
        while len(active) and time.monotonic() < deadline and not self.should_exit:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECS)
        if len(active):
            logger.warning(
                f"drain timeout of {self.timeout_secs:g} s: ending {len(active)} call(s) that "
                "are still running"
            )
        else:
            logger.info("drained: no calls left, shutting down")
        self.should_exit = True


def serve(app: FastAPI, sockets: list[socket.socket] | None = None) -> None:
    """Run ``app`` (made by ``create_app``) with uvicorn until stopped, draining on SIGTERM.

    It listens on the settings' host and port, or accepts from ``sockets`` (a worker of
    ``voicebot serve --workers``).
    """
    state: AppState = app.state.voicebot
    settings = state.settings
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", ws="websockets-sansio"
    )
    DrainingServer(config, state, settings.drain_timeout_secs).run(sockets=sockets)
