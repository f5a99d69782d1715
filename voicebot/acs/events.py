"""The two webhooks ACS posts to: Event Grid events and Call Automation callback CloudEvents.

Both arrive as JSON arrays. :func:`parse_event_grid` and :func:`parse_callbacks` turn a body into
typed events and raise :class:`EventFormatError` (naming the item and field) when it is not one;
fields this code does not use are ignored, so newer API versions keep working.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from voicebot.acs.calls import ResultInfo

EVENT_PREFIX = "Microsoft.Communication."
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL = "Microsoft.Communication.IncomingCall"


class EventFormatError(ValueError):
    """A webhook body is not the JSON ACS sends."""


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Identifier(_Wire):
    """A ``CommunicationIdentifierModel``: a phone number, an ACS user, a Teams user, …"""

    raw_id: str = ""
    kind: str = ""
    phone_number: dict[str, str] | None = None

    @property
    def party(self) -> str:
        """The E.164 number for a phone, else the raw id."""
        if self.phone_number and self.phone_number.get("value"):
            return self.phone_number["value"]
        if self.raw_id.startswith("4:"):
            return self.raw_id[2:]
        return self.raw_id


class EventGridEvent(_Wire):
    """One Event Grid event (Event Grid schema)."""

    id: str = ""
    event_type: str
    subject: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class IncomingCall(_Wire):
    """``data`` of ``Microsoft.Communication.IncomingCall``."""

    incoming_call_context: str = Field(min_length=1)
    from_: Identifier = Field(alias="from")
    to: Identifier
    server_call_id: str = ""
    correlation_id: str = ""
    caller_display_name: str = ""


class MediaStreamingUpdate(_Wire):
    content_type: str = ""
    media_streaming_status: str = ""
    media_streaming_status_details: str = ""


class CallEvent(_Wire):
    """One Call Automation callback, flattened: ``type`` is the short name (``CallConnected``)."""

    type: str
    call_connection_id: str
    server_call_id: str = ""
    correlation_id: str = ""
    operation_context: str | None = None
    result: ResultInfo | None = None
    media_streaming_update: MediaStreamingUpdate | None = None
    participant_count: int | None = None


def _items(body: Any, what: str) -> list[Any]:
    if isinstance(body, dict):
        return [body]
    if not isinstance(body, list):
        got = type(body).__name__
        raise EventFormatError(f"{what}: expected a JSON array of events, got {got}")
    return body


def _problem(index: int, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"event [{index}]: {where}: {err['msg']}"


def parse_event_grid(body: Any) -> list[EventGridEvent]:
    """The Event Grid events of a webhook body (an array, or one event)."""
    events = []
    for index, item in enumerate(_items(body, "Event Grid")):
        try:
            events.append(EventGridEvent.model_validate(item))
        except ValidationError as exc:
            raise EventFormatError(_problem(index, exc)) from None
    return events


def parse_incoming_call(event: EventGridEvent) -> IncomingCall:
    """The call an ``IncomingCall`` event offers."""
    try:
        return IncomingCall.model_validate(event.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise EventFormatError(f"IncomingCall {event.id}: data.{where}: {err['msg']}") from None


def parse_callbacks(body: Any) -> list[CallEvent]:
    """The callback events of a Call Automation webhook body (CloudEvents, an array or one)."""
    events = []
    for index, item in enumerate(_items(body, "callback")):
        if not isinstance(item, dict):
            raise EventFormatError(f"event [{index}]: expected an object")
        data = item.get("data")
        if not isinstance(data, dict):
            raise EventFormatError(f"event [{index}]: data: expected an object")
        event_type = str(item.get("type", ""))
        participants = data.get("participants")
        flat = {
            **data,
            "type": event_type.removeprefix(EVENT_PREFIX),
            "result": data.get("resultInformation"),
            "participant_count": len(participants) if isinstance(participants, list) else None,
        }
        try:
            events.append(CallEvent.model_validate(flat))
        except ValidationError as exc:
            raise EventFormatError(_problem(index, exc)) from None
    return events
