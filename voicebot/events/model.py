"""The live events of calls, as the dashboard and the browser conversation receive them.

Every event is a small pydantic model with a ``type`` tag, the ``call_id`` it belongs to, when it
happened (``at``, ``time.time()`` seconds) and the ``worker`` (``hostname:pid``) running the call.
They travel as JSON, one object per message, exactly as :meth:`CallEvent.model_dump_json` writes
them (and :func:`parse_event` reads them back):

=================  ================================================================================
``call_started``   a call connected (``source``: ``acs`` or ``browser``; ``pipeline``)
``call_ended``     it ended (``outcome``: a ``CallOutcome`` value; ``error`` if it failed)
``transcript``     words said: ``role`` ``user`` (as recognised) or ``bot`` (as synthesized),
                   ``final`` false while they may still change; ``agent`` speaking or listening
``handoff``        the agent router handed the call ``from_agent`` → ``to_agent``
``tool_call``      an agent called a tool (``args`` redacted as the decision log redacts them)
``turn_latency``   a caller turn was answered: voice-to-voice and its stages, in milliseconds
``error``          something failed (``source``: ``stt``, ``llm``, ``tts``, ``agents``, ...;
                   ``message``; ``fatal`` if it ended the call)
=================  ================================================================================

What was said is personal data: events live in memory and on the Redis channel only, are never
logged, and reach only authenticated dashboard clients or the caller's own browser.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


def worker_name() -> str:
    """``hostname:pid`` of this process: where a call or a dashboard client is served."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    call_id: str
    at: float = Field(default_factory=time.time)
    """When it happened, ``time.time()`` seconds."""
    worker: str = ""
    """``hostname:pid`` of the worker running the call (set by the bus when empty)."""


class CallStarted(_Event):
    type: Literal["call_started"] = "call_started"
    source: Literal["acs", "browser"] = "acs"
    pipeline: str = ""


class CallEnded(_Event):
    type: Literal["call_ended"] = "call_ended"
    outcome: str
    """A ``CallOutcome`` value: completed, cancelled, idle, max_duration, error."""
    error: str | None = None


class Transcript(_Event):
    type: Literal["transcript"] = "transcript"
    role: Literal["user", "bot"]
    text: str
    final: bool = True
    """False for an interim transcript or bot text still being synthesized."""
    agent: str | None = None
    """The agent speaking (bot) or listening (user); None without an agent router."""
    utterance: int = 0
    """Index of the utterance in the call: interim and final events of one utterance share it."""


class Handoff(_Event):
    type: Literal["handoff"] = "handoff"
    from_agent: str
    to_agent: str
    reason: str = ""
    turn: int = 0


class ToolCall(_Event):
    type: Literal["tool_call"] = "tool_call"
    agent: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    """Redacted: sensitive values are masked (see ``voicebot.agents.tools.redacted``)."""
    turn: int = 0


class TurnLatencyEvent(_Event):
    type: Literal["turn_latency"] = "turn_latency"
    turn: int
    voice_to_voice_ms: float
    stages_ms: dict[str, float]
    """``vad``, ``stt``, ``llm``, ``tools``, ``tts``, ``overhead``: they add up to the total."""
    agent: str | None = None


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    source: str
    """What failed: ``stt``, ``llm``, ``tts``, ``vad``, ``transport``, ``pipeline``, ``agents``."""
    message: str
    fatal: bool = False
    """True when it ended the call."""


CallEvent = Annotated[
    CallStarted | CallEnded | Transcript | Handoff | ToolCall | TurnLatencyEvent | ErrorEvent,
    Field(discriminator="type"),
]
"""Any live event; ``type`` says which."""


class _AnyEvent(RootModel[CallEvent]):
    """Reads any event by its ``type``."""


def parse_event(data: str | bytes) -> CallEvent:
    """The event a JSON message carries (``pydantic.ValidationError`` if it is not one)."""
    return _AnyEvent.model_validate_json(data).root


def event_from(data: Any) -> CallEvent:
    """The event that decoded JSON data describes (``pydantic.ValidationError`` if none)."""
    return _AnyEvent.model_validate(data).root


def event_json(event: CallEvent) -> str:
    """The event's wire JSON (what :func:`parse_event` reads)."""
    return event.model_dump_json()


def event_dict(event: CallEvent) -> dict[str, Any]:
    """The event as JSON-ready data."""
    return event.model_dump(mode="json")
