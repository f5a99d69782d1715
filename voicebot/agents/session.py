"""One call's agent state: the active agent, session memory, visits and decisions."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from voicebot.agents.decisions import DecisionLog, DecisionRecord, Kind
from voicebot.agents.store import Agent, AgentStore
from voicebot.agents.tools import ToolContext

Engine = Literal["llm", "policy"]


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
    _t0: float | None = None

    def __post_init__(self) -> None:
        self.log = DecisionLog(self.call_id)
        if not self.memory:
            self.memory = copy.deepcopy(self.store.spec.memory)

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
