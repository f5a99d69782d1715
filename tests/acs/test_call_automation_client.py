"""The real Call Automation SDK against the fake ACS service: exact REST requests, bounded failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from acs_support import free_socket

from voicebot.acs.client import (
    CallAutomation,
    CallAutomationError,
    parse_connection_string,
    streaming_options,
)
from voicebot.testing.fake_call_automation import FakeCallAutomation
from voicebot.testing.tasks import no_leaked_tasks

CALLBACK = "https://bot.example.com/api/v1/calls/callbacks?secret=s3cret"
MEDIA = "wss://bot.example.com/api/v1/media/stream?call_id=abc&token=1.sig"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeCallAutomation]:
    async with no_leaked_tasks(), FakeCallAutomation() as acs:
        yield acs


@pytest_asyncio.fixture
async def client(fake: FakeCallAutomation) -> AsyncIterator[CallAutomation]:
    client = CallAutomation.from_connection_string(fake.connection_string, timeout_secs=2)
    yield client
    await client.aclose()


async def test_answer_sends_media_streaming_options(
    fake: FakeCallAutomation, client: CallAutomation
) -> None:
    offer = fake.offer_call("+15551234567", "+15557654321")[0]["data"]
    connection = await client.answer(
        offer["incomingCallContext"], CALLBACK, streaming_options(MEDIA, 16000)
    )

    (request,) = fake.requests
    assert (request.operation, request.method, request.path) == (
        "answer_call",
        "POST",
        "/calling/callConnections:answer",
    )
    assert request.query == {"api-version": "2026-03-12"}
    assert request.auth_problem is None
    assert request.headers["Authorization"].startswith("HMAC-SHA256 SignedHeaders=")
    assert "Repeatability-Request-ID" in request.headers
    assert request.body == {
        "incomingCallContext": offer["incomingCallContext"],
        "callbackUri": CALLBACK,
        "mediaStreamingOptions": {
            "transportType": "websocket",
            "audioChannelType": "mixed",
            "transportUrl": MEDIA,
            "contentType": "audio",
            "startMediaStreaming": True,
            "enableBidirectional": True,
            "audioFormat": "pcm16KMono",
            "enableDtmfTones": True,
        },
    }
    assert connection.call_id in fake.calls
    assert connection.correlation_id == offer["correlationId"]
    assert connection.server_call_id == offer["serverCallId"]
    assert connection.state == "connecting"


async def test_create_call_to_a_phone_at_24khz(
    fake: FakeCallAutomation, client: CallAutomation
) -> None:
    connection = await client.create(
        "+15551112222", CALLBACK, streaming_options(MEDIA, 24000), caller_id="+15553334444"
    )

    (request,) = fake.of("create_call")
    assert request.path == "/calling/callConnections"
    assert request.body["targets"] == [
        {"rawId": "4:+15551112222", "phoneNumber": {"value": "+15551112222"}}
    ]
    assert request.body["sourceCallerIdNumber"] == {"value": "+15553334444"}
    assert request.body["callbackUri"] == CALLBACK
    assert request.body["mediaStreamingOptions"]["audioFormat"] == "pcm24KMono"
    assert fake.calls[connection.call_id].direction == "outbound"


async def test_get_transfer_and_hang_up(fake: FakeCallAutomation, client: CallAutomation) -> None:
    connection = await client.create("+15551112222", CALLBACK, streaming_options(MEDIA, 16000))
    call_id = connection.call_id

    assert (await client.get(call_id)).state == "connected"
    await client.transfer(call_id, "+15550001111", operation_context="escalation")
    await client.hang_up(call_id)

    get, transfer, terminate = fake.requests[1:]
    assert (get.method, get.path) == ("GET", f"/calling/callConnections/{call_id}")
    assert transfer.path == f"/calling/callConnections/{call_id}:transferToParticipant"
    assert transfer.body == {
        "targetParticipant": {"rawId": "4:+15550001111", "phoneNumber": {"value": "+15550001111"}},
        "operationContext": "escalation",
    }
    # hang_up(is_for_everyone=True) terminates the call: POST …:terminate, no body.
    assert (terminate.method, terminate.path) == (
        "POST",
        f"/calling/callConnections/{call_id}:terminate",
    )
    assert terminate.body is None
    assert all(r.auth_problem is None for r in fake.requests)


async def test_acs_refusal_names_operation_status_and_reason(client: CallAutomation) -> None:
    with pytest.raises(CallAutomationError) as caught:
        await client.hang_up("no-such-call")
    error = caught.value
    assert error.status == 404 and error.http_status == 404
    assert str(error).startswith("hang up: ACS at 127.0.0.1:")
    assert str(error).endswith("answered 404: 8522: Call not found.")


async def test_server_errors_are_retried_then_reported(
    fake: FakeCallAutomation, client: CallAutomation
) -> None:
    fake.fail("get_call", 503, code="ServiceUnavailable", message="try later")
    started = time.monotonic()
    with pytest.raises(CallAutomationError, match="get call: .* answered 503: ServiceUnavailable"):
        await client.get("call-1")
    assert time.monotonic() - started < 2
    assert len(fake.of("get_call")) == 3  # the first try and two retries


async def test_a_stalled_request_times_out(fake: FakeCallAutomation) -> None:
    fake.stall("answer_call")
    client = CallAutomation(fake.endpoint, fake.access_key, timeout_secs=0.3)
    started = time.monotonic()
    with pytest.raises(CallAutomationError) as caught:
        await client.answer("ctx", CALLBACK, streaming_options(MEDIA, 16000))
    await client.aclose()
    assert time.monotonic() - started < 1.0
    assert caught.value.timed_out and caught.value.http_status == 504
    assert str(caught.value).endswith(
        "no answer from ACS at " + fake.endpoint[7:] + " within 0.3 s"
    )


async def test_an_unreachable_endpoint_is_reported_quickly() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = CallAutomation(f"http://127.0.0.1:{port}", "a2V5", timeout_secs=5)
    started = time.monotonic()
    with pytest.raises(CallAutomationError) as caught:
        await client.get("call-1")
    await client.aclose()
    assert time.monotonic() - started < 3
    assert caught.value.http_status == 502
    assert f"get call: cannot reach ACS at 127.0.0.1:{port}" in str(caught.value)


async def test_requests_signed_with_another_key_are_refused(fake: FakeCallAutomation) -> None:
    client = CallAutomation(fake.endpoint, "b3RoZXIta2V5", timeout_secs=2)
    with pytest.raises(CallAutomationError, match="answered 401: Unauthorized: HMAC signature"):
        await client.get("call-1")
    await client.aclose()
    assert fake.requests[-1].auth_problem == "HMAC signature does not match"


def test_connection_string_keeps_the_endpoint_scheme() -> None:
    assert parse_connection_string("endpoint=http://127.0.0.1:9000/;accesskey=a2V5") == (
        "http://127.0.0.1:9000",
        "a2V5",
    )
    assert parse_connection_string("Endpoint=res.communication.azure.com;AccessKey=a2V5") == (
        "https://res.communication.azure.com",
        "a2V5",
    )


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("", "no endpoint=…; no accesskey=…"),
        ("endpoint=https://r.communication.azure.com/", "no accesskey=…"),
        ("endpoint=https://r/;accesskey=not base64!", "accesskey is not base64"),
    ],
)
def test_bad_connection_strings_list_every_problem(text: str, problems: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_connection_string(text)
    assert str(caught.value).startswith(problems + " (expected endpoint=https://")


def test_streaming_options_only_at_acs_rates() -> None:
    with pytest.raises(ValueError, match="ACS streams 16000 or 24000 Hz, not 8000"):
        streaming_options(MEDIA, 8000)
