"""The spans of one call: a root ``call`` span, ``turn`` spans under it, service spans under those.

::

    call                      the whole call: voicebot.call.id, .correlation_id, .caller_hash
    ├── tts                   the greeting (work outside any turn hangs off the call)
    ├── turn                  end of the caller's speech → first bot audio; latency by stage;
    │   │                     agent decisions made meanwhile as "agent.decision" events
    │   ├── stt               VAD stop → final transcript          voicebot.ttfb_ms
    │   ├── llm               response start → end (first token)   voicebot.ttfb_ms
    │   ├── tool              tool call → result                   voicebot.ttfb_ms
    │   └── tts               synthesis start → end (first audio)  voicebot.ttfb_ms
    └── turn …

Spans are written when what they describe is over, with the times it happened (the observer
knows a turn's start only once the caller has stopped speaking, and may learn that a turn went
on when the caller resumes), so every span is started and ended in one go. A service span may
end after its turn (the LLM still streams after the first audio went out); its parent is the
turn all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import AttributeValue

__all__ = ["Attributes", "CallTrace", "Event"]

Attributes = dict[str, AttributeValue]


@dataclass
class Event:
    """A span event: ``name`` at epoch nanoseconds ``at``."""

    name: str
    at: int
    attributes: Attributes = field(default_factory=dict)


class CallTrace:
    """Writes the spans of one call into ``tracer``; times are epoch nanoseconds."""

    def __init__(self, tracer: Tracer, start: int, attributes: Mapping[str, AttributeValue]):
        """Start the call's root span (a new trace, whatever context the caller is in)."""
        self._tracer = tracer
        self.span = tracer.start_span(
            "call",
            context=Context(),
            kind=SpanKind.SERVER,
            attributes=dict(attributes),
            start_time=start,
        )

    def record(
        self,
        name: str,
        start: int,
        end: int,
        attributes: Mapping[str, AttributeValue],
        *,
        parent: Span | None = None,
        events: Sequence[Event] = (),
        error: str | None = None,
    ) -> Span:
        """Write a finished span under ``parent`` (default: the call span) and return it."""
        span = self._tracer.start_span(
            name,
            context=set_span_in_context(parent or self.span),
            kind=SpanKind.INTERNAL,
            attributes=dict(attributes),
            start_time=start,
        )
        for event in events:
            span.add_event(event.name, event.attributes, timestamp=event.at)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=max(start, end))
        return span

    def event(self, event: Event) -> None:
        """Add ``event`` to the call span."""
        self.span.add_event(event.name, event.attributes, timestamp=event.at)

    def end(self, end: int, attributes: Mapping[str, AttributeValue], error: str | None) -> None:
        """End the call span with its final ``attributes``; ``error`` marks it failed."""
        self.span.set_attributes(dict(attributes))
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end(end_time=end)
