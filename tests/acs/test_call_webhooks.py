"""ACS webhooks on a real server: Event Grid handshake, incoming calls answered through the real SDK
against the fake ACS, callbacks (posted by the fake over real sockets) driving call state."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from acs_support import SECRET, Server, serve, wait_until

from voicebot.acs.calls import CallState
from voicebot.acs.tokens import verify
from voicebot.runner import CallOutcome, CallRunner
from voicebot.testing.fake_call_automation import (
    FakeCallAutomation,
    incoming_call_event,
    validation_event,
)

CALLER, CALLEE = "+15551234567", "+15557654321"


async def answer_one(server: Server, acs: FakeCallAutomation, offer: object = None) -> str:
    offer = offer or acs.offer_call(CALLER, CALLEE)
    response = await server.client.post(server.webhook("events"), json=offer)
    assert response.status_code == 200, response.text
    (call_id,) = response.json()["answered"]
    return str(call_id)


async def test_subscription_validation_handshake(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        response = await server.client.post(
            server.webhook("events"), json=validation_event("512d38b6-c7b8")
        )
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "512d38b6-c7b8"}
    assert acs.requests == []


async def test_incoming_call_is_answered_with_media_streaming(acs: FakeCallAutomation) -> None:
    offer = acs.offer_call(CALLER, CALLEE)
    async with serve(acs) as server:
        call_id = await answer_one(server, acs, offer)

        (request,) = acs.of("answer_call")
        assert request.auth_problem is None
        body = request.body
        assert body["incomingCallContext"] == offer[0]["data"]["incomingCallContext"]
        assert body["callbackUri"] == f"{server.base_url}/api/v1/calls/callbacks?secret={SECRET}"
        media = body["mediaStreamingOptions"]
        assert {k: v for k, v in media.items() if k != "transportUrl"} == {
            "transportType": "websocket",
            "audioChannelType": "mixed",
            "contentType": "audio",
            "startMediaStreaming": True,
            "enableBidirectional": True,
            "audioFormat": "pcm16KMono",
            "enableDtmfTones": True,
        }
        url = urlsplit(media["transportUrl"])
        assert (url.scheme, url.netloc, url.path) == (
            "ws",
            server.base_url.removeprefix("http://"),
            "/api/v1/media/stream",
        )
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        record = await server.state.calls.get(call_id)
        assert record is not None
        assert query["call_id"] == record.stream_id
        assert verify(server.state.signing_key, query["call_id"], query["token"]) is None

        # The fake posts CallConnected and MediaStreamingStarted back, as ACS does.
        async def streaming() -> bool:
            current = await server.state.calls.get(call_id)
            return current is not None and current.state is CallState.MEDIA_STREAMING

        await wait_until(streaming)
        record = await server.state.calls.get(call_id)
        assert record is not None
        assert (record.direction, record.caller, record.callee) == ("inbound", CALLER, CALLEE)
        assert record.correlation_id == acs.calls[call_id].correlation_id
        assert record.connected_at is not None
        await wait_until(lambda: len(acs.callbacks_sent) == 2)
        assert [status for _, _, status in acs.callbacks_sent] == [200, 200]


async def test_unknown_event_types_are_acknowledged_and_ignored(acs: FakeCallAutomation) -> None:
    other = [
        {
            **validation_event("x")[0],
            "eventType": "Microsoft.Communication.RecordingFileStatusUpdated",
            "data": {},
        }
    ]
    async with serve(acs) as server:
        events = await server.client.post(server.webhook("events"), json=other)
        callback = {
            "id": "1",
            "type": "Microsoft.Communication.PlayCompleted",
            "data": {"callConnectionId": "call-9"},
            "specversion": "1.0",
            "source": "calling/callConnections/call-9",
        }
        callbacks = await server.client.post(server.webhook("callbacks"), json=[callback])
        assert await server.state.calls.get("call-9") is None
    assert (events.status_code, events.json()) == (200, {"answered": []})
    assert (callbacks.status_code, callbacks.json()) == (200, {"handled": 0, "ignored": 1})
    assert acs.requests == []


async def test_webhooks_without_the_secret_are_refused(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        for secret in (None, "", "wrong-secret", SECRET + "x", SECRET.upper()):
            events = await server.client.post(
                server.webhook("events", secret), json=acs.offer_call(CALLER, CALLEE)
            )
            callbacks = await server.client.post(server.webhook("callbacks", secret), json=[])
            assert (events.status_code, callbacks.status_code) == (401, 401), secret
            assert events.json() == {"detail": "missing or wrong secret"}
    assert acs.requests == []


async def test_callbacks_drive_the_call_state(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        call_id = await answer_one(server, acs)
        await wait_until(lambda: len(acs.callbacks_sent) == 2)

        assert await acs.send_event(call_id, "MediaStreamingStopped") == 200
        record = await server.state.calls.get(call_id)
        assert record is not None and record.state is CallState.CONNECTED
        assert record.last_event == "MediaStreamingStopped"

        result = {"code": 200, "subCode": 7000, "message": "The conversation has ended."}
        assert await acs.send_event(call_id, "CallDisconnected", resultInformation=result) == 200
        record = await server.state.calls.get(call_id)
    assert record is not None
    assert record.state is CallState.DISCONNECTED
    assert record.ended_at is not None
    assert record.result is not None and (record.result.sub_code, record.result.message) == (
        7000,
        "The conversation has ended.",
    )


async def test_call_disconnected_cancels_the_running_pipeline(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        call_id = await answer_one(server, acs)
        runner = CallRunner(server.state.spec, call_id=call_id, active=server.state.active)
        task = asyncio.create_task(runner.run())
        await runner.wait_started()
        assert call_id in server.state.active

        started = time.monotonic()
        assert await acs.send_event(call_id, "CallDisconnected") == 200
        assert await asyncio.wait_for(task, 3) is CallOutcome.CANCELLED
        assert time.monotonic() - started < 2.5
        assert call_id not in server.state.active
        record = await server.state.calls.get(call_id)
    assert record is not None and record.state is CallState.DISCONNECTED


async def test_a_failed_answer_is_a_502_with_the_reason(acs: FakeCallAutomation) -> None:
    acs.fail("answer_call", 400, code="8523", message="Invalid request.")
    async with serve(acs) as server:
        response = await server.client.post(
            server.webhook("events"), json=acs.offer_call(CALLER, CALLEE)
        )
        status = server.state.calls.status()
    assert response.status_code == 502
    assert response.json()["detail"].endswith("answered 400: 8523: Invalid request.")
    assert response.json()["detail"].startswith("answer call: ACS at 127.0.0.1:")
    assert status["status"] == "error" and "8523" in status["last_error"]


async def test_a_stalled_answer_is_a_504_not_a_hang(acs: FakeCallAutomation) -> None:
    acs.stall("answer_call")
    async with serve(acs, timeout_secs=0.3) as server:
        started = time.monotonic()
        response = await server.client.post(
            server.webhook("events"), json=acs.offer_call(CALLER, CALLEE)
        )
    assert time.monotonic() - started < 1.5
    assert response.status_code == 504
    assert response.json()["detail"].endswith("within 0.3 s")


@pytest.mark.parametrize("name", ["events", "callbacks"])
async def test_bodies_that_are_not_events_are_400(acs: FakeCallAutomation, name: str) -> None:
    async with serve(acs) as server:
        not_json = await server.client.post(
            server.webhook(name), content=b"{", headers={"content-type": "application/json"}
        )
        not_events = await server.client.post(server.webhook(name), json=[{"data": 1}])
    assert not_json.status_code == 400 and not_json.json() == {"detail": "body is not JSON"}
    assert not_events.status_code == 400
    assert not_events.json()["detail"].startswith("event [0]: ")


async def test_webhooks_answer_503_without_call_control() -> None:
    async with serve() as server:
        response = await server.client.post(
            server.webhook("events"), json=incoming_call_event(CALLER, CALLEE)
        )
    assert response.status_code == 503
    assert response.json() == {
        "detail": "call control not configured: set VOICEBOT_ACS_CONNECTION_STRING"
    }


async def test_one_failed_answer_does_not_stop_the_rest_of_a_batch(acs: FakeCallAutomation) -> None:
    stale = incoming_call_event(CALLER, CALLEE, incoming_call_context="already-used")
    fresh = acs.offer_call("+15550000001", CALLEE)
    async with serve(acs) as server:
        response = await server.client.post(server.webhook("events"), json=stale + fresh)
        calls = await server.state.calls.list()
    assert response.status_code == 502
    assert "8523: Invalid request: unknown or used incomingCallContext" in response.json()["detail"]
    assert [call.caller for call in calls] == ["+15550000001"]
