"""What survives a dropped media socket: the state of one call, :class:`CallSession`.

A session is plain data (JSON-serialisable, validated by pydantic) so any worker can load it and
carry the call on. It holds personal data — the caller's number, what was said, what the agents
learned — so its ``repr`` shows only the call id, agent, turn count and version, and voicebot never
logs its contents.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voicebot.sessions.keys import check_call_id

Role = Literal["system", "user", "assistant", "tool"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (every session timestamp is)."""
    return datetime.now(UTC)


class ChatMessage(BaseModel):
    """One message of an agent's conversation, in the OpenAI chat shape.

    Extra keys (``name``, ``tool_calls``, ``tool_call_id``) are kept as they are, so an LLM
    context's messages round-trip through the store unchanged.
    """

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | None = Field(default=None, repr=False)


class CallDirection(StrEnum):
    """Who started the conversation."""

    INBOUND = "inbound"
    """A person called the bot's number (ACS IncomingCall)."""
    OUTBOUND = "outbound"
    """The bot placed the call (``POST /calls/initiate``)."""
    BROWSER = "browser"
    """A person talks from a browser (``/realtime/conversation``)."""


class CallMetadata(BaseModel):
    """Facts about the call itself; set when it starts and rarely changed after.

    ``caller`` and ``callee`` are phone numbers or user ids: personal data, left out of ``repr`` and
    never logged.
    """

    call_id: str
    """ACS call connection id, or the browser session id: the key of the session."""
    correlation_id: str | None = None
    """ACS correlation id (ties the call to Azure's own logs)."""
    direction: CallDirection = CallDirection.INBOUND
    caller: str | None = Field(default=None, repr=False)
    callee: str | None = Field(default=None, repr=False)

    @field_validator("call_id")
    @classmethod
    def _valid_call_id(cls, value: str) -> str:
        return check_call_id(value)


class CallSession(BaseModel):
    """Everything a worker needs to carry a call on where another left it.

    * ``history`` maps an agent name to that agent's conversation (each agent keeps its own
      context across hand-offs, so returning to an agent does not start it over).
    * ``memory`` is what the agents learned and share (e.g. ``verified: true``, an account id);
      ``slots`` are the values the current task is collecting. Both must be JSON-serialisable.
    * ``visits`` counts the entries into each agent, so a resumed call greets a returning
      caller as the old worker would have.
    * ``version`` is the store's, bumped by every write; a worker never sets it (see
      :meth:`voicebot.sessions.store.SessionStore.save`). 0 means "never stored".
    * ``created_at`` / ``updated_at`` are UTC; the store sets ``updated_at`` on every write.
    """

    format: Literal[1] = 1
    """Layout of the stored JSON; changes only with an incompatible change of this model."""
    call: CallMetadata
    active_agent: str | None = None
    memory: dict[str, Any] = Field(default_factory=dict, repr=False)
    slots: dict[str, Any] = Field(default_factory=dict, repr=False)
    history: dict[str, list[ChatMessage]] = Field(default_factory=dict, repr=False)
    visits: dict[str, int] = Field(default_factory=dict)
    """How many times each agent was entered (an agent met before says its return greeting)."""
    turn_count: int = Field(default=0, ge=0)
    """Completed turns (one user utterance and the bot's answer to it)."""
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)
    version: int = Field(default=0, ge=0)

    @classmethod
    def new(
        cls,
        call_id: str,
        *,
        agent: str | None = None,
        correlation_id: str | None = None,
        direction: CallDirection | str = CallDirection.INBOUND,
        caller: str | None = None,
        callee: str | None = None,
    ) -> CallSession:
        """A fresh session for a call that has no stored state."""
        return cls(
            call=CallMetadata(
                call_id=call_id,
                correlation_id=correlation_id,
                direction=CallDirection(direction),
                caller=caller,
                callee=callee,
            ),
            active_agent=agent,
        )

    @property
    def call_id(self) -> str:
        return self.call.call_id

    def messages(self, agent: str | None = None) -> list[ChatMessage]:
        """The conversation of ``agent`` (default: the active one), created empty if new.

        The list is the session's own: appending to it changes the session.
        """
        name = self._agent_name(agent)
        return self.history.setdefault(name, [])

    def add_message(
        self, role: Role, content: str | None, *, agent: str | None = None, **extra: Any
    ) -> ChatMessage:
        """Append a message to the conversation of ``agent`` (default: the active one)."""
        message = ChatMessage(role=role, content=content, **extra)
        self.messages(agent).append(message)
        return message

    def _agent_name(self, agent: str | None) -> str:
        name = agent or self.active_agent
        if not name:
            raise ValueError(
                f"call {self.call_id}: no agent given and the session has no active agent"
            )
        return name
