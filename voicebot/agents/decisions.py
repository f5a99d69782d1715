"""The decision log: every step the agent router takes in a call, for people and for tests.

Each :class:`DecisionRecord` (an agent entered, a turn taken, a policy rule chosen, a tool called,
a handoff, an escalation, the end of the call, an LLM failure) goes three ways:

* into the call's :class:`DecisionLog` (``router.decisions``), which tests and ``voicebot call``
  read: ``handoffs`` and ``agent_per_turn``;
* to the log as one ``agent decision {...}`` line of JSON, bound with ``call_id`` and
  ``decision`` for structured sinks;
* downstream as an :class:`AgentDecisionFrame` (a system frame), so observers (telemetry, the
  dashboard, the call simulator) see decisions in time with the rest of the call.

Arguments and results are redacted before they are recorded (see
:func:`voicebot.agents.tools.redacted`); what the caller said is never recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loguru import logger
from pipecat.frames.frames import ControlFrame, SystemFrame

Kind = Literal["enter", "turn", "rule", "tool", "handoff", "escalate", "end", "error"]


@dataclass
class DecisionRecord:
    """One decision of the router.

    ``at`` is seconds since the call's agents started; ``turn`` counts the caller's turns
    (0: before the caller first spoke); ``agent`` is the agent that was active when it was made.
    """

    kind: Kind
    agent: str
    turn: int
    at: float
    engine: str = ""
    """``llm`` or ``policy``: what produced the step (turns, rules, tools)."""
    tool: str | None = None
    args: dict[str, Any] | None = None
    result: Any = None
    target: str | None = None
    """The agent handed off to, or where an escalation went."""
    reason: str = ""
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record without empty fields."""
        return {k: v for k, v in asdict(self).items() if v not in (None, "", {})}


@dataclass
class AgentDecisionFrame(SystemFrame):
    """A decision of the agent router, pushed downstream as it is made."""

    call_id: str = ""
    record: DecisionRecord = field(default_factory=lambda: DecisionRecord("turn", "", 0, 0.0))


@dataclass
class TransferCallFrame(ControlFrame):
    """Asks call control to transfer the call to a person (``to``: E.164 number or ACS id).

    Pushed downstream after the message that announces it, so it reaches the transport once the
    caller has heard it.
    """

    to: str = ""
    reason: str = ""


class DecisionLog:
    """The decisions of one call, in order."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.records: list[DecisionRecord] = []

    def add(self, record: DecisionRecord) -> DecisionRecord:
        """Keep ``record`` and write it to the log."""
        self.records.append(record)
        data = record.as_dict()
        logger.bind(call_id=self.call_id, decision=data).info(
            f"call {self.call_id}: agent decision {json.dumps(data, default=str)}"
        )
        return record

    def of_kind(self, *kinds: Kind) -> list[DecisionRecord]:
        return [r for r in self.records if r.kind in kinds]

    @property
    def handoffs(self) -> list[dict[str, Any]]:
        """Every handoff: ``{"from", "to", "reason", "mode", "turn", "latency_ms"}``."""
        return handoffs(self.records)

    @property
    def agent_per_turn(self) -> list[str]:
        """The agent that answered each caller turn, in order (see :func:`agent_per_turn`)."""
        return agent_per_turn(self.records)


def handoffs(records: Iterable[DecisionRecord]) -> list[dict[str, Any]]:
    """The handoffs among ``records``, as plain dicts (for JSON reports).

    ``latency_ms`` runs from the handoff decision to the target agent being entered (its voice
    and LLM settings sent, its greeting queued).
    """
    ordered = list(records)
    out: list[dict[str, Any]] = []
    for index, record in enumerate(ordered):
        if record.kind != "handoff":
            continue
        entered = next(
            (r for r in ordered[index + 1 :] if r.kind == "enter" and r.agent == record.target),
            None,
        )
        out.append(
            {
                "from": record.agent,
                "to": record.target,
                "reason": record.reason,
                "mode": entered.reason if entered is not None else None,
                "turn": record.turn,
                "latency_ms": entered.latency_ms if entered is not None else None,
            }
        )
    return out


def agent_per_turn(records: Iterable[DecisionRecord]) -> list[str]:
    """For each caller turn, the agent active once the bot had answered it.

    A turn answered by a handoff belongs to the agent handed to (whose greeting the caller
    heard), so a turn's agent is the last agent entered before the next turn began.
    """
    agents: list[str] = []
    for record in records:
        if record.kind == "turn":
            agents.append(record.agent)
        elif record.kind == "enter" and agents:
            agents[-1] = record.agent
    return agents
