"""Reprompt a silent caller: "Are you still there?" after N seconds in which nobody spoke.

The pipeline's ``call:`` section turns it on::

    call:
      reprompt_after_secs: 8              # silence before a reprompt
      reprompt_text: "Are you still there?"
      max_reprompts: 2                    # in a row, without the caller speaking in between
      idle_timeout_secs: 20               # then the call ends, as without reprompts

:func:`voicebot.build.builder.build_processors` places one :class:`InactivityMonitor` per call
right after the last processor that reads caller audio, so the 50 audio frames a second never
reach it, while the VAD's events and transcripts come down to it and the output transport's
``BotStartedSpeakingFrame``/``BotStoppedSpeakingFrame`` come up to it. Its reprompt is a
``TTSSpeakFrame`` pushed downstream to the pipeline's TTS.

One timer per call, set only when a speech event changes who is speaking (never per frame): it
runs while neither the caller nor the bot speaks and is cancelled when either starts. The
caller speaking (or pressing a key) resets the count of reprompts. The hang-up is the worker's
idle timeout (``idle_timeout_secs``), which the bot's speech (each reprompt too) resets: a caller
who stays silent hears ``max_reprompts`` reprompts, ``reprompt_after_secs`` apart, and the call
ends ``idle_timeout_secs`` after the last one.

Without an output transport (a test harness ending in a recorder) the bot's speech is not
reported; the timer then re-arms when a reprompt is pushed, not when it has been played.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    StartFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["InactivityMonitor"]


class InactivityMonitor(FrameProcessor):
    """Pushes ``TTSSpeakFrame(text)`` after ``after_secs`` with neither side speaking, at most
    ``max_reprompts`` times in a row; see the module docstring. Passes every frame on.

    Event handler ``on_reprompt(monitor, count)`` runs after each reprompt is pushed
    (``count`` is 1 for the first of a run).
    """

    def __init__(self, *, after_secs: float, text: str, max_reprompts: int) -> None:
        """Watch a call.

        Args:
            after_secs: Seconds of silence from both sides before a reprompt.
            text: What the bot says.
            max_reprompts: Reprompts in a row without the caller speaking.
        """
        super().__init__(name="inactivity-monitor", enable_direct_mode=True)
        if after_secs <= 0:
            raise ValueError(f"after_secs must be positive, got {after_secs}")
        self.after_secs = after_secs
        self.text = text
        self.max_reprompts = max_reprompts
        self.reprompts = 0
        """Reprompts since the caller last spoke."""
        self._caller_speaking = False
        self._bot_speaking = False
        self._timer: asyncio.TimerHandle | None = None
        self._pushing: asyncio.Task[None] | None = None
        self._running = False
        self._register_event_handler("on_reprompt")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow who speaks; (re)set the timer only when that changes."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame | UserStartedSpeakingFrame):
            self._caller_speaking = True
            self.reprompts = 0
            self._disarm()
        elif isinstance(frame, VADUserStoppedSpeakingFrame | UserStoppedSpeakingFrame):
            self._caller_speaking = False
            self._arm()
        elif isinstance(frame, TranscriptionFrame | InputDTMFFrame):
            self.reprompts = 0
            self._arm()
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            self._disarm()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._arm()
        elif isinstance(frame, StartFrame):
            self._running = True
            self._arm()
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._stop()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Cancel the timer (a call cancelled before its EndFrame reached here)."""
        await self._stop()
        await super().cleanup()

    def _arm(self) -> None:
        """Start the timer afresh if nobody speaks and reprompts are left."""
        self._disarm()
        if (
            self._running
            and not (self._caller_speaking or self._bot_speaking)
            and self.reprompts < self.max_reprompts
        ):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.after_secs, self._quiet_too_long)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _quiet_too_long(self) -> None:
        self._timer = None
        if self._pushing is None or self._pushing.done():
            self._pushing = self.create_task(self._reprompt(), name="reprompt")

    async def _reprompt(self) -> None:
        self.reprompts += 1
        logger.info(
            f"{self}: {self.after_secs} s of silence, reprompt {self.reprompts} of "
            f"{self.max_reprompts}"
        )
        await self.push_frame(TTSSpeakFrame(self.text))
        await self._call_event_handler("on_reprompt", self.reprompts)
        self._arm()  # until the bot is heard speaking it (or if it never is)

    async def _stop(self) -> None:
        self._running = False
        self._disarm()
        if self._pushing is not None:
            task, self._pushing = self._pushing, None
            if not task.done():
                await self.cancel_task(task)
