"""One call's agent state: the active agent, session memory, visits and decisions.

When the call has a live session (:class:`~voicebot.sessions.calls.LiveSession`, opened by the
call's endpoint), :meth:`AgentSession.attach` ties the two together: a resumed call restores its
active agent, memory, visits, turn count and conversation from it; from then on
:meth:`AgentSession.save` copies the agents' state and the LLM context's messages into it and
marks it dirty, so its writer stores it in the background (never awaited on the audio path).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from loguru import logger
from pydantic import ValidationError

from voicebot.agents.decisions import DecisionLog, DecisionRecord, Kind
from voicebot.agents.store import Agent, AgentStore
from voicebot.agents.tools import ToolContext
from voicebot.sessions.calls import LiveSession
from voicebot.sessions.model import CallSession, ChatMessage, Role

Engine = Literal["llm", "policy"]

SEQ_KEY = "seq"
"""Extra key of every stored message: its position in the call's whole conversation, so the
per-agent histories merge back into one chronological LLM context on resume."""

_ROLES = frozenset(get_args(Role))


@dataclass
class AgentSession:
    """The agents' side of one call; owned by the call's router, never shared between calls.

    ``memory`` starts as a copy of the store's ``memory:`` and is what prompts, greetings, policy
    rules and tools read and write. ``has_llm`` says whether an LLM is configured; without one
    every agent runs on its policy.
    """

    call_id: str
    store: AgentStore
    active: str
    has_llm: bool
    memory: dict[str, Any] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    turn: int = 0
    silent_entry: bool = False
    """Set on entering an agent by a silent handoff: its first answer is to the caller's last
    words, not to the handoff's result."""
    log: DecisionLog = field(init=False)
    on_record: Callable[[DecisionRecord], Awaitable[None]] | None = None
    """Called with every record (the router pushes it downstream as a frame)."""
    live: LiveSession | None = None
    """The call's stored session (see :meth:`attach`); None when the call keeps none."""
    resumed: bool = False
    """True when :meth:`attach` restored a session stored by an earlier socket of the call: the
    agent goes on listening, without a greeting."""
    _t0: float | None = None
    _history: ConversationHistory = field(init=False)

    def __post_init__(self) -> None:
        self.log = DecisionLog(self.call_id)
        if not self.memory:
            self.memory = copy.deepcopy(self.store.spec.memory)
        self._history = ConversationHistory()

    def attach(self, live: LiveSession) -> list[dict[str, Any]]:
        """Tie this call's agents to its live session; returns the LLM context to start with.

        A resumed session (``live.resumed``) is restored: active agent (if the store still has
        it), memory, visits, turn count, and its conversation as one chronological message list
        (returned). A fresh session takes this call's starting state. Either way the session
        then shares this object's memory and visits (same dicts), and :meth:`save` keeps the rest
        in step.
        """
        self.live = live
        call = live.session
        messages: list[dict[str, Any]] = []
        if live.resumed and not live.restored:
            self.resumed = True
            if call.active_agent in self.store.agents:
                self.active = call.active_agent
            elif call.active_agent is not None:
                logger.warning(
                    f"call {self.call_id}: stored agent {call.active_agent!r} is not in the "
                    f"store; going on with {self.active!r}"
                )
            if call.memory:
                self.memory = call.memory
            self.visits = call.visits
            self.turn = call.turn_count
            messages = self._history.restore(call)
        live.restored = True
        call.memory = self.memory
        call.visits = self.visits
        call.active_agent = self.active
        return messages

    def save(self, messages: Sequence[Any] | None = None) -> None:
        """Copy the agents' state (and ``messages``, the LLM context's) into the live session
        and mark it dirty: its writer stores it soon. Returns at once; never raises."""
        live = self.live
        if live is None:
            return
        call = live.session
        call.active_agent = self.active
        call.turn_count = self.turn
        call.memory = self.memory
        call.visits = self.visits
        if messages is not None:
            call.history = self._history.update(messages, self.active)
        live.mark_dirty()

    @property
    def agent(self) -> Agent:
        """The active agent."""
        return self.store.agent(self.active)

    def engine(self, agent: str | None = None) -> Engine:
        """What runs ``agent``'s turns (default: the active agent's)."""
        spec = self.store.agent(agent or self.active).spec
        return "llm" if self.has_llm and spec.engine == "auto" else "policy"

    def tool_context(self) -> ToolContext:
        return ToolContext(self.call_id, self.active, self.memory, self.store.dir)

    def now(self) -> float:
        """Seconds since the session started (event-loop clock)."""
        loop_time = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = loop_time
        return round(loop_time - self._t0, 3)

    async def record(self, kind: Kind, *, agent: str | None = None, **fields: Any) -> None:
        """Add a decision made now by ``agent`` (default: the active one) to the log."""
        record = DecisionRecord(
            kind=kind, agent=agent or self.active, turn=self.turn, at=self.now(), **fields
        )
        self.log.add(record)
        if self.on_record is not None:
            await self.on_record(record)


class ConversationHistory:
    """Mirrors an LLM context's messages into a session's per-agent histories.

    Each message is filed under the agent that was active when it was first seen, with
    :data:`SEQ_KEY`, its position in the whole conversation. Messages are converted again at every
    :meth:`update` (a tool result is filled in after its message was added). When the context is
    replaced (an agent with a fresh context), the messages that left it are kept as they were
    last seen, before the new context's.
    """

    def __init__(self) -> None:
        self._earlier: list[tuple[str, dict[str, Any]]] = []
        """(agent, message as last seen) of the messages that left the context."""
        self._current: list[tuple[Any, str]] = []
        """(message object of the context, agent) in context order."""

    def restore(self, call: CallSession) -> list[dict[str, Any]]:
        """The stored conversation of ``call`` as one chronological list of context messages
        (the objects the context will hold, so later updates recognise them)."""
        stored = [
            (agent, index, message)
            for agent, messages in call.history.items()
            for index, message in enumerate(messages)
        ]
        stored.sort(key=lambda entry: (_seq(entry[2]), entry[1]))
        restored: list[dict[str, Any]] = []
        self._earlier, self._current = [], []
        for agent, _, message in stored:
            data = message.model_dump(exclude_none=True)
            data.pop(SEQ_KEY, None)
            restored.append(data)
            self._current.append((data, agent))
        return restored

    def update(self, messages: Sequence[Any], active: str) -> dict[str, list[ChatMessage]]:
        """The per-agent histories for the context's ``messages`` now (``active``: who talks)."""
        known = self._current
        kept = 0
        while kept < len(known) and kept < len(messages) and messages[kept] is known[kept][0]:
            kept += 1
        for message, agent in known[kept:]:  # the context was replaced or cut: keep what left
            if isinstance(message, dict):
                self._earlier.append((agent, dict(message)))
        self._current = known[:kept] + [(m, active) for m in messages[kept:]]
        history: dict[str, list[ChatMessage]] = {}
        seq = 0
        entries = self._earlier + [(agent, message) for message, agent in self._current]
        for agent, message in entries:
            converted = _chat_message(message, seq)
            if converted is not None:
                history.setdefault(agent, []).append(converted)
                seq += 1
        return history


def _seq(message: ChatMessage) -> int:
    value = (message.model_extra or {}).get(SEQ_KEY)
    return value if isinstance(value, int) else 1 << 62


def _chat_message(message: Any, seq: int) -> ChatMessage | None:
    """``message`` (an OpenAI-shaped context message) as a stored one at position ``seq``; None
    if it is not one (a provider-specific message, or content that is not text)."""
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        return None
    try:
        return ChatMessage.model_validate({**message, SEQ_KEY: seq})
    except ValidationError:
        return None
