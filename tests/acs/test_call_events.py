"""Webhook bodies as ACS posts them → typed events; anything else → a precise EventFormatError."""

from __future__ import annotations

import pytest

from voicebot.acs.calls import ResultInfo
from voicebot.acs.events import (
    INCOMING_CALL,
    SUBSCRIPTION_VALIDATION,
    EventFormatError,
    parse_callbacks,
    parse_event_grid,
    parse_incoming_call,
)

# The documented examples (reference: acs-call-automation.md).
INCOMING = [
    {
        "id": "e1",
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Communication/communicationServices/r",
        "subject": "/caller/4:+15551234567/recipient/4:+15557654321",
        "data": {
            "to": {
                "kind": "phoneNumber",
                "rawId": "4:+15557654321",
                "phoneNumber": {"value": "+15557654321"},
            },
            "from": {
                "kind": "phoneNumber",
                "rawId": "4:+15551234567",
                "phoneNumber": {"value": "+15551234567"},
            },
            "serverCallId": "srv-1",
            "callerDisplayName": "",
            "incomingCallContext": "opaque-context",
            "correlationId": "d732db64-0000",
        },
        "eventType": "Microsoft.Communication.IncomingCall",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2026-01-01T00:00:00Z",
    }
]
CONNECTED = [
    {
        "id": "c1",
        "source": "calling/callConnections/call-1",
        "type": "Microsoft.Communication.CallConnected",
        "data": {
            "callConnectionId": "call-1",
            "serverCallId": "srv-1",
            "correlationId": "corr-1",
            "operationContext": None,
            "resultInformation": {"code": 200, "subCode": 0, "message": "ok"},
        },
        "time": "2026-01-01T00:00:01Z",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": "calling/callConnections/call-1",
    }
]


def test_subscription_validation() -> None:
    body = [
        {
            "id": "v",
            "eventType": SUBSCRIPTION_VALIDATION,
            "data": {"validationCode": "512d38b6", "validationUrl": "https://x"},
            "eventTime": "2026-01-01T00:00:00Z",
        }
    ]
    (event,) = parse_event_grid(body)
    assert event.event_type == SUBSCRIPTION_VALIDATION
    assert event.data["validationCode"] == "512d38b6"


def test_incoming_call_from_a_phone() -> None:
    (event,) = parse_event_grid(INCOMING)
    assert event.event_type == INCOMING_CALL
    call = parse_incoming_call(event)
    assert call.incoming_call_context == "opaque-context"
    assert call.from_.party == "+15551234567"
    assert call.to.party == "+15557654321"
    assert (call.server_call_id, call.correlation_id) == ("srv-1", "d732db64-0000")


def test_incoming_call_from_an_acs_user_keeps_its_raw_id() -> None:
    data = dict(INCOMING[0]["data"])  # type: ignore[arg-type]
    data["from"] = {
        "kind": "communicationUser",
        "rawId": "8:acs:abc",
        "communicationUser": {"id": "8:acs:abc"},
    }
    (event,) = parse_event_grid([{**INCOMING[0], "data": data}])
    assert parse_incoming_call(event).from_.party == "8:acs:abc"


def test_incoming_call_without_context_is_refused_with_the_field() -> None:
    data = {k: v for k, v in INCOMING[0]["data"].items() if k != "incomingCallContext"}  # type: ignore[attr-defined]
    (event,) = parse_event_grid([{**INCOMING[0], "data": data}])
    with pytest.raises(
        EventFormatError, match=r"IncomingCall e1: data\.incomingCallContext: Field required"
    ):
        parse_incoming_call(event)


def test_callback_is_flattened() -> None:
    (event,) = parse_callbacks(CONNECTED)
    assert event.type == "CallConnected"
    assert event.call_connection_id == "call-1"
    assert event.correlation_id == "corr-1"
    assert event.result == ResultInfo(code=200, sub_code=0, message="ok")


def test_media_streaming_and_participants_callbacks() -> None:
    streaming = {
        **CONNECTED[0],
        "type": "Microsoft.Communication.MediaStreamingFailed",
        "data": {
            "callConnectionId": "call-1",
            "mediaStreamingUpdate": {
                "contentType": "Audio",
                "mediaStreamingStatus": "mediaStreamingFailed",
                "mediaStreamingStatusDetails": "streamConnectionUnsuccessful",
            },
            "resultInformation": {"code": 500, "subCode": 8581, "message": "could not connect"},
        },
    }
    participants = {
        **CONNECTED[0],
        "type": "Microsoft.Communication.ParticipantsUpdated",
        "data": {
            "callConnectionId": "call-1",
            "participants": [{"identifier": {}}, {"identifier": {}}],
        },
    }
    failed, updated = parse_callbacks([streaming, participants])
    assert failed.media_streaming_update is not None
    assert (
        failed.media_streaming_update.media_streaming_status_details
        == "streamConnectionUnsuccessful"
    )
    assert failed.result == ResultInfo(code=500, sub_code=8581, message="could not connect")
    assert updated.participant_count == 2


def test_a_single_object_is_accepted_as_a_batch_of_one() -> None:
    assert len(parse_callbacks(CONNECTED[0])) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("hello", "callback: expected a JSON array of events, got str"),
        ([1], r"event \[0\]: expected an object"),
        (
            [{"type": "Microsoft.Communication.CallConnected"}],
            r"event \[0\]: data: expected an object",
        ),
        ([{"type": "x", "data": {}}], r"event \[0\]: callConnectionId: Field required"),
    ],
)
def test_bad_callback_bodies(body: object, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        parse_callbacks(body)


def test_event_grid_item_without_type() -> None:
    with pytest.raises(EventFormatError, match=r"event \[1\]: eventType: Field required"):
        parse_event_grid([INCOMING[0], {"id": "x", "data": {}}])
