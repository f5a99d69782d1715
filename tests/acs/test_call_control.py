"""CallControl: settings checked at start-up, hang-up when the bot ends a call, transfer, readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from acs_support import ECHO, settings

from voicebot.acs.calls import CallRecord, CallState
from voicebot.acs.client import CallAutomation
from voicebot.acs.control import CallControl, CallControlSettingsError, call_rate
from voicebot.acs.events import CallEvent, IncomingCall
from voicebot.build.loader import load_pipeline
from voicebot.runner import ActiveCalls, CallOutcome
from voicebot.server import create_app
from voicebot.testing.fake_call_automation import FakeCallAutomation
from voicebot.testing.tasks import no_leaked_tasks


@pytest_asyncio.fixture
async def quiet_acs() -> AsyncIterator[FakeCallAutomation]:
    """A fake ACS that posts no callbacks (these tests drive state themselves)."""
    async with no_leaked_tasks(), FakeCallAutomation() as fake:
        yield fake


@pytest_asyncio.fixture
async def control(quiet_acs: FakeCallAutomation) -> AsyncIterator[CallControl]:
    client = CallAutomation(quiet_acs.endpoint, quiet_acs.access_key, timeout_secs=2)
    calls = CallControl(
        client, base_url="https://bot.example.com", callback_secret="s", signing_key=b"k"
    )
    yield calls
    await calls.aclose()


async def answered(control: CallControl, acs: FakeCallAutomation) -> CallRecord:
    data = acs.offer_call("+15551234567", "+15557654321")[0]["data"]
    return await control.answer(IncomingCall.model_validate(data))


def test_incomplete_settings_are_listed_all_at_once() -> None:
    spec = load_pipeline(ECHO)
    bad = settings(
        api_key=None,
        callback_secret=None,
        acs_endpoint="127.0.0.1:9",
        acs_connection_string="endpoint=https://r.communication.azure.com/",
    )
    with pytest.raises(CallControlSettingsError) as caught:
        CallControl.from_settings(bad, spec, ActiveCalls(), b"k")
    assert str(caught.value) == (
        "call control is not usable:\n"
        "  VOICEBOT_API_KEY: not set (the call-control API needs it)\n"
        "  VOICEBOT_CALLBACK_SECRET: not set (ACS webhooks need it)\n"
        "  VOICEBOT_ACS_ENDPOINT: '127.0.0.1:9' is not an http(s) URL\n"
        "  VOICEBOT_ACS_CONNECTION_STRING: no accesskey=… (expected "
        "endpoint=https://<resource>.communication.azure.com/;accesskey=<base64 key>)"
    )
    # The app refuses to start with them, like with a bad pipeline.
    with pytest.raises(CallControlSettingsError):
        create_app(bad)


async def test_without_a_connection_string_call_control_is_off() -> None:
    app = create_app(settings(acs_connection_string=None))
    calls: CallControl = app.state.voicebot.calls
    assert not calls.configured
    assert calls.status() == {"status": "not_configured"}
    # The media endpoint may still report finished calls: nothing to hang up, no error.
    await calls.on_call_finished("call-1", CallOutcome.COMPLETED)


async def test_the_endpoint_setting_overrides_the_connection_string() -> None:
    app = create_app(
        settings(
            acs_connection_string="endpoint=https://r.communication.azure.com/;accesskey=a2V5",
            acs_endpoint="http://127.0.0.1:8123",
        )
    )
    calls: CallControl = app.state.voicebot.calls
    assert calls.client is not None and calls.client.endpoint == "http://127.0.0.1:8123"
    assert calls.status() == {
        "status": "ok",
        "endpoint": "127.0.0.1:8123",
        "last_error": None,
        "last_error_at": None,
    }
    await calls.aclose()


@pytest.mark.parametrize(
    ("pipeline_rate", "acs_rate"), [(8000, 16000), (16000, 16000), (24000, 24000), (48000, 24000)]
)
def test_call_rate(pipeline_rate: int, acs_rate: int) -> None:
    assert call_rate(pipeline_rate) == acs_rate


@pytest.mark.parametrize(
    "outcome",
    [CallOutcome.COMPLETED, CallOutcome.IDLE, CallOutcome.MAX_DURATION, CallOutcome.ERROR],
)
async def test_the_bot_ending_a_call_hangs_up_through_acs(
    control: CallControl, quiet_acs: FakeCallAutomation, outcome: CallOutcome
) -> None:
    record = await answered(control, quiet_acs)
    await control.on_call_finished(record.call_id, outcome)
    (terminate,) = quiet_acs.of("terminate_call")
    assert terminate.path == f"/calling/callConnections/{record.call_id}:terminate"
    stored = await control.get(record.call_id)
    assert stored is not None and stored.outcome == outcome.value


async def test_a_caller_hang_up_is_not_hung_up_again(
    control: CallControl, quiet_acs: FakeCallAutomation
) -> None:
    record = await answered(control, quiet_acs)
    await control.on_call_finished(record.call_id, CallOutcome.CANCELLED)
    disconnected = await answered(control, quiet_acs)
    await control.handle_callback(
        CallEvent(type="CallDisconnected", call_connection_id=disconnected.call_id)
    )
    await control.on_call_finished(disconnected.call_id, CallOutcome.COMPLETED)
    await control.on_call_finished("never-heard-of", CallOutcome.COMPLETED)
    assert quiet_acs.of("terminate_call") == []


async def test_a_call_is_found_by_the_stream_id_of_its_media_url(
    control: CallControl, quiet_acs: FakeCallAutomation
) -> None:
    record = await answered(control, quiet_acs)
    assert record.stream_id
    await control.on_call_finished(record.stream_id, CallOutcome.COMPLETED)
    assert len(quiet_acs.of("terminate_call")) == 1


async def test_a_failed_hang_up_is_logged_and_kept_not_raised(
    control: CallControl, quiet_acs: FakeCallAutomation
) -> None:
    record = await answered(control, quiet_acs)
    quiet_acs.fail("terminate_call", 500, code="Oops", message="down")
    await control.on_call_finished(record.call_id, CallOutcome.COMPLETED)
    stored = await control.get(record.call_id)
    assert stored is not None and stored.error is not None
    assert stored.error.endswith("answered 500: Oops: down")
    assert control.status()["status"] == "error"
    quiet_acs.clear_faults()
    await control.hang_up(record.call_id)
    assert control.status()["status"] == "ok"
    assert control.status()["last_error"].endswith("Oops: down")


async def test_transfer_to_a_phone_number(
    control: CallControl, quiet_acs: FakeCallAutomation
) -> None:
    record = await answered(control, quiet_acs)
    transferring = await control.transfer(record.call_id, "+15550001111")
    assert transferring.state is CallState.TRANSFERRING
    (request,) = quiet_acs.of("transfer_call")
    assert request.body["targetParticipant"]["phoneNumber"] == {"value": "+15550001111"}

    for event_type in ("CallTransferAccepted", "CallDisconnected"):
        await control.handle_callback(CallEvent(type=event_type, call_connection_id=record.call_id))
    done = await control.get(record.call_id)
    assert done is not None
    assert (done.state, done.outcome) == (CallState.DISCONNECTED, "transferred")


async def test_a_callback_before_the_answer_returns_loses_nothing(
    control: CallControl, quiet_acs: FakeCallAutomation
) -> None:
    # ACS may post a call's first callbacks before the answer request has returned.
    quiet_acs.next_call_id = "call-early"
    await control.handle_callback(
        CallEvent(type="MediaStreamingStarted", call_connection_id="call-early")
    )
    record = await answered(control, quiet_acs)
    assert record.call_id == "call-early"
    assert record.state is CallState.MEDIA_STREAMING
    assert (record.direction, record.caller) == ("inbound", "+15551234567")
    assert record.stream_id is not None and record.connected_at is not None
