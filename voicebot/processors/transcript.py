"""What was said on a call, as the server saw it: a cheap observer and the per-call record it fills.

:class:`TranscriptRecorder` is a pipecat observer attached to one call. It looks only at the first
push of four frame kinds — ``TranscriptionFrame`` (what the caller said, as recognised),
``TTSStartedFrame`` (the bot starts a response), ``TTSTextFrame`` (the text that went to speech,
greetings included) and the agent router's ``AgentDecisionFrame`` (an agent entered, a handoff)
— and appends them to the call's :class:`CallTranscript`. Bot text is what was synthesized:
after a barge-in the caller may have heard less of it.

A :class:`CallTranscript` is the server-side event record of one call: utterances with the agent
that spoke them (the agent active when the response started; None without an agent router), the
router's handoffs, the rejected media messages by kind, and how the call ended.
:class:`TranscriptStore` keeps the records of a process's recent calls by call id (one instance
per process, in its shared resources). Transcripts are personal data: they live in this
process's memory only and are never logged.

A record may have a :class:`TranscriptListener` (the live events of the dashboard): it is told
of each utterance as it grows and when it is final, of interim caller transcripts, and of the
router's decisions. Only then does the recorder also look at ``InterimTranscriptionFrame`` and
``TTSStoppedFrame``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from pipecat.frames.frames import (
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection

from voicebot.agents.decisions import AgentDecisionFrame, DecisionRecord, handoffs

#: Key of the process's :class:`TranscriptStore` in its shared resources.
TRANSCRIPTS_RESOURCE = "call_transcripts"

#: How many finished calls a :class:`TranscriptStore` remembers.
KEEP_CALLS = 200


@dataclass
class Utterance:
    """One thing said on the call.

    Attributes:
        role: ``"user"`` (the caller, as recognised) or ``"bot"``.
        text: The words; for the bot, the text it synthesized.
        at: When it started, ``time.time()`` seconds: a bot response when its speech synthesis
            started, a caller utterance when its final transcript arrived.
        agent: The agent that spoke a bot utterance (None until agents hand off).
    """

    role: Literal["user", "bot"]
    text: str
    at: float
    agent: str | None = None


class TranscriptListener(Protocol):
    """Told of a :class:`CallTranscript`'s changes as they happen, on the call's observer task.

    Must be quick and must not raise: hand the data on (e.g. to an event bus) and return.
    """

    def on_utterance(self, utterance: Utterance, final: bool) -> None:
        """An utterance was added or grew (``final`` False), or is complete (``final`` True)."""

    def on_interim(self, text: str, agent: str | None) -> None:
        """An interim transcript of the caller (not stored in the record)."""

    def on_decision(self, record: DecisionRecord) -> None:
        """The agent router made a decision (every kind)."""


@dataclass
class CallTranscript:
    """The event record of one call (see the module docstring).

    Attributes:
        call_id: The ACS call connection id.
        utterances: In the order they started.
        decisions: The agent router's ``enter``, ``handoff`` and ``escalate`` decisions.
        agent: The agent speaking now (None: no agent router).
        bad_input: Rejected inbound media messages by kind (the serializer's kind names).
        outcome: Why the call ended (a ``CallOutcome`` value), None while it runs.
    """

    call_id: str
    utterances: list[Utterance] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    agent: str | None = None
    bad_input: Counter[str] = field(default_factory=Counter)
    outcome: str | None = None
    listener: TranscriptListener | None = field(default=None, repr=False, compare=False)
    _open_bot: Utterance | None = field(default=None, repr=False)
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _bot_by_context: dict[str, Utterance] = field(default_factory=dict, repr=False)

    def user_said(self, text: str, at: float | None = None) -> None:
        """Record a final transcript of the caller."""
        self._close_bot()
        utterance = Utterance("user", text, time.time() if at is None else at)
        self.utterances.append(utterance)
        if self.listener is not None:
            self.listener.on_utterance(utterance, True)

    def user_interim(self, text: str) -> None:
        """An interim transcript of the caller: only the listener hears of it."""
        if self.listener is not None:
            self.listener.on_interim(text, self.agent)

    def bot_started(self, context_id: str | None, at: float | None = None) -> Utterance:
        """Record the start of a bot response (a TTS context, once); its text follows."""
        if context_id is not None and context_id in self._bot_by_context:
            return self._bot_by_context[context_id]
        self._close_bot()
        utterance = Utterance("bot", "", time.time() if at is None else at, self.agent)
        self.utterances.append(utterance)
        self._open_bot = utterance
        if context_id is not None:
            self._bot_by_context[context_id] = utterance
        return utterance

    def bot_stopped(self, context_id: str | None) -> None:
        """The bot response ``context_id`` is fully synthesized: its text is final."""
        utterance = self._bot_by_context.get(context_id) if context_id is not None else None
        if utterance is not None and utterance is self._open_bot:
            self._close_bot()

    def _close_bot(self) -> None:
        utterance, self._open_bot = self._open_bot, None
        if utterance is not None and utterance.text and self.listener is not None:
            self.listener.on_utterance(utterance, True)

    def bot_said(self, context_id: str | None, text: str, at: float | None = None) -> None:
        """Add text the bot synthesized to its response ``context_id`` (started if unknown)."""
        utterance = self._bot_by_context.get(context_id) if context_id is not None else None
        if utterance is None:
            utterance = self.bot_started(context_id, at)
        utterance.text = " ".join(f"{utterance.text} {text}".split())
        if self.listener is not None and utterance is self._open_bot:
            self.listener.on_utterance(utterance, False)

    def decided(self, record: DecisionRecord) -> None:
        """Record a decision of the agent router; an ``enter`` makes its agent the speaker."""
        if record.kind in ("enter", "handoff", "escalate"):
            self.decisions.append(record)
        if record.kind == "enter":
            self.agent = record.agent
        if self.listener is not None:
            self.listener.on_decision(record)

    @property
    def handoffs(self) -> list[dict[str, Any]]:
        """The handoffs, as the router reports them (``from``, ``to``, ``reason``, ``mode``,
        ``turn``, ``latency_ms``)."""
        return handoffs(self.decisions)

    def finish(self, outcome: str) -> None:
        """The call has ended, for ``outcome``."""
        self._close_bot()
        self.outcome = outcome
        self._ended.set()

    async def wait_finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the call to end; True if it has."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data."""
        return {
            "call_id": self.call_id,
            "utterances": [asdict(u) for u in self.utterances],
            "handoffs": self.handoffs,
            "agent": self.agent,
            "bad_input": dict(self.bad_input),
            "outcome": self.outcome,
        }


class TranscriptStore:
    """The records of this process's calls by call id: running ones and the last ``keep`` others.

    Starting a call whose id is already stored replaces the old record.
    """

    def __init__(self, keep: int = KEEP_CALLS) -> None:
        self._keep = keep
        self._records: OrderedDict[str, CallTranscript] = OrderedDict()

    def start(self, call_id: str) -> CallTranscript:
        """A new, empty record for ``call_id``."""
        record = CallTranscript(call_id)
        self._records.pop(call_id, None)
        self._records[call_id] = record
        finished = [cid for cid, r in self._records.items() if r.outcome is not None]
        for stale in finished[: max(0, len(finished) - self._keep)]:
            del self._records[stale]
        return record

    def get(self, call_id: str) -> CallTranscript | None:
        return self._records.get(call_id)

    def __len__(self) -> int:
        return len(self._records)


class TranscriptRecorder(BaseObserver):
    """Fills a :class:`CallTranscript` from the frames of one call's pipeline.

    Cheap by design: it is told only about the first push of each frame
    (``observe_every_push=False``) and returns at once for every frame kind but the four it
    records.
    """

    frame_types = (
        TranscriptionFrame,
        InterimTranscriptionFrame,
        TTSStartedFrame,
        TTSTextFrame,
        TTSStoppedFrame,
        AgentDecisionFrame,
    )
    """The frames it records; no other is passed to it (see :mod:`voicebot.build.observers`)."""

    def __init__(self, transcript: CallTranscript, **kwargs: Any) -> None:
        super().__init__(observe_every_push=False, **kwargs)
        self.transcript = transcript

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.direction == FrameDirection.DOWNSTREAM:
            self.record(data.frame)

    def record(self, frame: Frame, at: float | None = None) -> None:
        """Record ``frame`` if it is one of the four kinds; ``at`` defaults to ``time.time()``.

        Also the way to fill a transcript from frames recorded elsewhere (e.g. a test harness,
        with its own clock).
        """
        if isinstance(frame, TranscriptionFrame):
            if frame.text.strip():
                self.transcript.user_said(frame.text.strip(), at)
        elif isinstance(frame, TTSStartedFrame):
            self.transcript.bot_started(frame.context_id, at)
        elif isinstance(frame, TTSTextFrame) and frame.text.strip():
            self.transcript.bot_said(frame.context_id, frame.text, at)
        elif isinstance(frame, AgentDecisionFrame):
            self.transcript.decided(frame.record)
        elif self.transcript.listener is None:
            return
        elif isinstance(frame, InterimTranscriptionFrame):
            if frame.text.strip():
                self.transcript.user_interim(frame.text.strip())
        elif isinstance(frame, TTSStoppedFrame):
            self.transcript.bot_stopped(frame.context_id)
