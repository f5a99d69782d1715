"""Call records: the store, state transitions from callbacks, and masking of phone numbers."""

from __future__ import annotations

import pytest

from voicebot.acs.calls import CallRecord, CallState, InMemoryCallStore, ResultInfo, mask_party
from voicebot.acs.control import apply_event, next_state
from voicebot.acs.events import CallEvent


def event(type: str, call_id: str = "call-1", **fields: object) -> CallEvent:
    return CallEvent(type=type, call_connection_id=call_id, **fields)  # type: ignore[arg-type]


async def test_update_is_read_modify_write() -> None:
    store = InMemoryCallStore()
    assert await store.get("call-1") is None
    created = await store.update(
        "call-1", lambda r: r or CallRecord.new("call-1", CallState.ANSWERING)
    )
    assert created is not None and created.state is CallState.ANSWERING
    updated = await store.update(
        "call-1", lambda r: r.changed(state=CallState.CONNECTED) if r else None
    )
    assert updated is not None and updated.state is CallState.CONNECTED
    assert updated.updated_at >= created.updated_at
    assert await store.get("call-1") == updated
    # A change that returns None leaves the store as it was.
    assert await store.update("nope", lambda r: None) is None
    assert [r.call_id for r in await store.list()] == ["call-1"]


async def test_a_change_cannot_move_a_record_to_another_id() -> None:
    store = InMemoryCallStore()
    with pytest.raises(ValueError, match="returned call 'b'"):
        await store.update("a", lambda r: CallRecord.new("b", CallState.CONNECTED))


async def test_oldest_ended_calls_are_forgotten_first_live_ones_never() -> None:
    store = InMemoryCallStore(max_calls=2)
    await store.update("live", lambda r: CallRecord.new("live", CallState.CONNECTED))
    await store.update("ended", lambda r: CallRecord.new("ended", CallState.DISCONNECTED))
    await store.update("new", lambda r: CallRecord.new("new", CallState.ANSWERING))
    assert [r.call_id for r in await store.list()] == ["live", "new"]


@pytest.mark.parametrize(
    ("state", "event_type", "after"),
    [
        (CallState.ANSWERING, "CallConnected", CallState.CONNECTED),
        (CallState.DIALING, "CallConnected", CallState.CONNECTED),
        (CallState.CONNECTED, "MediaStreamingStarted", CallState.MEDIA_STREAMING),
        # A late CallConnected never moves a streaming call back.
        (CallState.MEDIA_STREAMING, "CallConnected", CallState.MEDIA_STREAMING),
        (CallState.MEDIA_STREAMING, "MediaStreamingStopped", CallState.CONNECTED),
        (CallState.MEDIA_STREAMING, "MediaStreamingFailed", CallState.CONNECTED),
        (CallState.MEDIA_STREAMING, "CallTransferAccepted", CallState.TRANSFERRING),
        (CallState.TRANSFERRING, "CallTransferFailed", CallState.CONNECTED),
        (CallState.DIALING, "CreateCallFailed", CallState.FAILED),
        (CallState.ANSWERING, "AnswerCallFailed", CallState.FAILED),
        (CallState.MEDIA_STREAMING, "CallDisconnected", CallState.DISCONNECTED),
        (CallState.MEDIA_STREAMING, "ParticipantsUpdated", CallState.MEDIA_STREAMING),
        # Ended calls stay ended.
        (CallState.DISCONNECTED, "CallConnected", CallState.DISCONNECTED),
        (CallState.FAILED, "CallDisconnected", CallState.FAILED),
    ],
)
def test_next_state(state: CallState, event_type: str, after: CallState) -> None:
    assert next_state(state, event_type) is after


def test_apply_event_records_times_result_and_outcome() -> None:
    record = apply_event(None, event("CallConnected", correlation_id="corr"))
    assert record.state is CallState.CONNECTED
    assert record.direction is None
    assert record.connected_at is not None and record.ended_at is None
    assert record.correlation_id == "corr"
    assert record.last_event == "CallConnected"

    record = apply_event(record, event("CallTransferAccepted", result=ResultInfo(code=202)))
    assert record.state is CallState.TRANSFERRING
    assert record.outcome == "transferred"
    assert record.result == ResultInfo(code=202)

    record = apply_event(record, event("CallDisconnected"))
    assert record.state is CallState.DISCONNECTED
    assert record.ended_at is not None
    assert record.outcome == "transferred"


def test_failed_call_outcome() -> None:
    dialing = CallRecord.new("call-1", CallState.DIALING)
    failed = apply_event(
        dialing, event("CreateCallFailed", result=ResultInfo(code=408, sub_code=8501))
    )
    assert (failed.state, failed.outcome) == (CallState.FAILED, "failed")
    assert failed.ended_at is not None


@pytest.mark.parametrize(
    ("party", "masked"),
    [
        ("+15551234567", "+*******4567"),
        ("+123", "+123"),
        ("8:acs:3d20e1de-0f28-41c5", "8:acs:…"),
        ("opaque", "…"),
        (None, None),
    ],
)
def test_mask_party(party: str | None, masked: str | None) -> None:
    assert mask_party(party) == masked


def test_list_view_masks_numbers_detail_view_does_not() -> None:
    record = CallRecord.new(
        "call-1", CallState.CONNECTED, caller="+15551234567", callee="+15557654321", stream_id="s"
    )
    assert record.view()["caller"] == "+15551234567"
    masked = record.view(mask_numbers=True)
    assert (masked["caller"], masked["callee"]) == ("+*******4567", "+*******4321")
    assert "stream_id" not in masked
    assert masked["state"] == "connected"
