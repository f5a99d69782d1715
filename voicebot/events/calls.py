"""One call's live events: what its transcript record and telemetry observer already see, published.

:class:`CallEvents` adds no observer to the call: it listens to the call's
:class:`~voicebot.processors.transcript.CallTranscript` (utterances, interim transcripts, the
router's decisions) and to its :class:`~voicebot.telemetry.observer.CallObserver` (answered
turns, error frames), and turns what they report into events on the process's bus. Publishing
only queues, so none of this waits on a subscriber or on Redis.
"""

from __future__ import annotations

from typing import Literal

from voicebot.agents.decisions import DecisionRecord
from voicebot.events.bus import EventBus
from voicebot.events.model import (
    CallEnded,
    CallStarted,
    ErrorEvent,
    Handoff,
    ToolCall,
    Transcript,
    TurnLatencyEvent,
)
from voicebot.processors.transcript import CallTranscript, Utterance
from voicebot.telemetry.observer import CallObserver
from voicebot.telemetry.turns import TurnLatency


class CallEvents:
    """Publishes the events of call ``call_id`` on ``bus`` (a ``TranscriptListener``).

    Use: ``events = CallEvents(bus, call_id, source="acs")``, ``events.attach(record,
    observer)``, ``events.started()`` once the call is accepted, ``events.ended(outcome)`` when
    it is over.
    """

    def __init__(
        self,
        bus: EventBus,
        call_id: str,
        *,
        source: Literal["acs", "browser"] = "acs",
        pipeline: str = "",
    ) -> None:
        self.bus = bus
        self.call_id = call_id
        self._source: Literal["acs", "browser"] = source
        self._pipeline = pipeline
        self._record: CallTranscript | None = None
        self._numbers: dict[int, int] = {}  # id(utterance) -> its number in the call
        self._fatal_reported = False

    def attach(self, record: CallTranscript, observer: CallObserver | None = None) -> None:
        """Listen to the call's record and, if given, to its observer's answered turns."""
        self._record = record
        record.listener = self
        if observer is not None:
            observer.listeners.append(self.on_turn)
            observer.error_listeners.append(self.on_error)

    def started(self) -> None:
        self.bus.publish(
            CallStarted(call_id=self.call_id, source=self._source, pipeline=self._pipeline)
        )

    def ended(self, outcome: str, error: str | None = None) -> None:
        if error and not self._fatal_reported:
            self.bus.publish(
                ErrorEvent(call_id=self.call_id, source="pipeline", message=error, fatal=True)
            )
        self.bus.publish(CallEnded(call_id=self.call_id, outcome=outcome, error=error))

    # -- TranscriptListener --------------------------------------------------------------------

    def on_utterance(self, utterance: Utterance, final: bool) -> None:
        number = self._numbers.setdefault(id(utterance), len(self._numbers) + 1)
        agent = utterance.agent if utterance.role == "bot" else self._agent()
        self.bus.publish(
            Transcript(
                call_id=self.call_id,
                at=utterance.at,
                role=utterance.role,
                text=utterance.text,
                final=final,
                agent=agent,
                utterance=number,
            )
        )

    def on_interim(self, text: str, agent: str | None) -> None:
        self.bus.publish(
            Transcript(
                call_id=self.call_id,
                role="user",
                text=text,
                final=False,
                agent=agent,
                utterance=len(self._numbers) + 1,  # the number its final will have
            )
        )

    def on_decision(self, record: DecisionRecord) -> None:
        if record.kind == "handoff" and record.target:
            self.bus.publish(
                Handoff(
                    call_id=self.call_id,
                    from_agent=record.agent,
                    to_agent=record.target,
                    reason=record.reason,
                    turn=record.turn,
                )
            )
        elif record.kind == "tool" and record.tool:
            self.bus.publish(
                ToolCall(
                    call_id=self.call_id,
                    agent=record.agent,
                    tool=record.tool,
                    args=dict(record.args or {}),  # redacted by the decision log
                    turn=record.turn,
                )
            )
        elif record.kind == "error" and record.engine != "llm":
            # An LLM failure is published once, from its ErrorFrame (on_error); the decision
            # only notes it. Agent errors with no frame (a refused handoff) are published here.
            message = record.reason or "agent error"
            self.bus.publish(ErrorEvent(call_id=self.call_id, source="agents", message=message))

    # -- the observer's turns and errors ------------------------------------------------------

    def on_error(self, source: str, _category: str, message: str, fatal: bool) -> None:
        self._fatal_reported = self._fatal_reported or fatal
        self.bus.publish(
            ErrorEvent(call_id=self.call_id, source=source, message=message, fatal=fatal)
        )

    def on_turn(self, latency: TurnLatency) -> None:
        self.bus.publish(
            TurnLatencyEvent(
                call_id=self.call_id,
                at=latency.at,
                turn=latency.turn,
                voice_to_voice_ms=round(latency.voice_to_voice_ms, 1),
                stages_ms={k: round(v, 1) for k, v in latency.stages_ms.items()},
                agent=self._agent(),
            )
        )

    def _agent(self) -> str | None:
        return self._record.agent if self._record is not None else None
