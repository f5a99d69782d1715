"""Live call events for the dashboard and the browser conversation.

* :mod:`voicebot.events.model`: the typed events (call started/ended, transcripts, handoffs,
  tool calls, turn latency, errors) and their JSON.
* :class:`EventBus` (one per process, :func:`event_bus_for`): non-blocking publish, local
  subscribers, and the :class:`RedisRelay` that carries events between workers.
* :class:`CallEvents`: publishes one call's events from its transcript record and telemetry
  observer, adding no observer of its own.
"""

from voicebot.events.bus import EventBus, RedisRelay, Subscription
from voicebot.events.calls import CallEvents
from voicebot.events.model import (
    CallEnded,
    CallEvent,
    CallStarted,
    ErrorEvent,
    Handoff,
    ToolCall,
    Transcript,
    TurnLatencyEvent,
    event_dict,
    event_json,
    parse_event,
    worker_name,
)
from voicebot.events.settings import (
    EVENTS_RESOURCE,
    EventSettings,
    create_event_bus,
    event_bus_for,
    events_channel,
)

__all__ = [
    "EVENTS_RESOURCE",
    "CallEnded",
    "CallEvent",
    "CallEvents",
    "CallStarted",
    "ErrorEvent",
    "EventBus",
    "EventSettings",
    "Handoff",
    "RedisRelay",
    "Subscription",
    "ToolCall",
    "Transcript",
    "TurnLatencyEvent",
    "create_event_bus",
    "event_bus_for",
    "event_dict",
    "event_json",
    "events_channel",
    "parse_event",
    "worker_name",
]
