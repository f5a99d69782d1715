"""The call-control API on a real server: API key, outbound calls, hang-up, call views, failures."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from acs_support import API_KEY, SECRET, Server, free_socket, serve, wait_until

from voicebot.acs.calls import CallState
from voicebot.acs.tokens import verify
from voicebot.testing.fake_call_automation import FakeCallAutomation

CALLEE, CALLER_ID = "+15551112222", "+15553334444"


async def place(server: Server, auth: dict[str, str], to: str = CALLEE) -> dict[str, object]:
    response = await server.client.post(
        "/api/v1/calls/initiate", json={"to": to, "from": CALLER_ID}, headers=auth
    )
    assert response.status_code == 202, response.text
    body: dict[str, object] = response.json()
    return body


async def state_of(server: Server, call_id: str) -> CallState | None:
    record = await server.state.calls.get(call_id)
    return record.state if record else None


REFUSED = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": API_KEY},
    {"x-api-key": "wrong"},
    {"x-api-key": ""},
]
ACCEPTED = [
    {"Authorization": f"Bearer {API_KEY}"},
    {"authorization": f"bearer  {API_KEY}"},
    {"x-api-key": API_KEY},
]


async def test_api_needs_the_key_as_bearer_or_x_api_key(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        for headers in REFUSED:
            responses = [
                await server.client.get("/api/v1/calls", headers=headers),
                await server.client.get("/api/v1/calls/x", headers=headers),
                await server.client.post("/api/v1/calls/x/hangup", headers=headers),
                await server.client.post(
                    "/api/v1/calls/initiate", json={"to": CALLEE}, headers=headers
                ),
            ]
            assert [r.status_code for r in responses] == [401] * 4, headers
            assert responses[0].json() == {"detail": "missing or wrong API key"}
            assert responses[0].headers["www-authenticate"] == "Bearer"
        for headers in ACCEPTED:
            response = await server.client.get("/api/v1/calls", headers=headers)
            assert (response.status_code, response.json()) == (200, {"calls": []}), headers
    assert acs.requests == []


async def test_api_answers_503_without_call_control(auth: dict[str, str]) -> None:
    async with serve() as server:
        listed = await server.client.get("/api/v1/calls", headers=auth)
        placed = await server.client.post(
            "/api/v1/calls/initiate", json={"to": CALLEE}, headers=auth
        )
    assert (listed.status_code, placed.status_code) == (503, 503)
    assert listed.json() == {
        "detail": "call control not configured: set VOICEBOT_ACS_CONNECTION_STRING"
    }


async def test_initiate_places_a_call_that_streams_to_us(
    acs: FakeCallAutomation, auth: dict[str, str]
) -> None:
    async with serve(acs) as server:
        body = await place(server, auth)
        call_id = str(body["call_id"])
        assert body["state"] == "dialing"
        assert (body["direction"], body["callee"], body["caller"]) == (
            "outbound",
            CALLEE,
            CALLER_ID,
        )

        (request,) = acs.of("create_call")
        assert request.body["targets"] == [
            {"rawId": f"4:{CALLEE}", "phoneNumber": {"value": CALLEE}}
        ]
        assert request.body["sourceCallerIdNumber"] == {"value": CALLER_ID}
        assert (
            request.body["callbackUri"]
            == f"{server.base_url}/api/v1/calls/callbacks?secret={SECRET}"
        )
        media = request.body["mediaStreamingOptions"]
        assert media["enableBidirectional"] is True and media["audioFormat"] == "pcm16KMono"
        query = {k: v[0] for k, v in parse_qs(urlsplit(media["transportUrl"]).query).items()}
        assert verify(server.state.signing_key, query["call_id"], query["token"]) is None

        # The fake "answers" and posts CallConnected, MediaStreamingStarted.
        async def streaming() -> bool:
            return await state_of(server, call_id) is CallState.MEDIA_STREAMING

        await wait_until(streaming)


async def test_initiate_without_from_and_with_bad_numbers(
    acs: FakeCallAutomation, auth: dict[str, str]
) -> None:
    async with serve(acs) as server:
        without_from = await server.client.post(
            "/api/v1/calls/initiate", json={"to": CALLEE}, headers=auth
        )
        bad = [
            await server.client.post("/api/v1/calls/initiate", json=body, headers=auth)
            for body in (
                {"to": "5551112222"},
                {"to": "+1-555"},
                {},
                {"to": CALLEE, "from": "me"},
                {"to": CALLEE, "x": 1},
            )
        ]
    assert without_from.status_code == 202
    assert "sourceCallerIdNumber" not in acs.of("create_call")[0].body
    assert [r.status_code for r in bad] == [422] * 5


async def test_get_and_list_calls(acs: FakeCallAutomation, auth: dict[str, str]) -> None:
    async with serve(acs) as server:
        call_id = str((await place(server, auth))["call_id"])
        await wait_until(lambda: len(acs.callbacks_sent) == 2)

        one = await server.client.get(f"/api/v1/calls/{call_id}", headers=auth)
        fresh = await server.client.get(f"/api/v1/calls/{call_id}?refresh=true", headers=auth)
        listed = await server.client.get("/api/v1/calls", headers=auth)
        unknown = await server.client.get("/api/v1/calls/no-such-call", headers=auth)

    assert one.status_code == 200
    assert one.json()["callee"] == CALLEE
    assert one.json()["state"] == "media_streaming"
    assert "acs_state" not in one.json()
    assert fresh.json()["acs_state"] == "connected"
    assert acs.of("get_call")[0].path == f"/calling/callConnections/{call_id}"
    (item,) = listed.json()["calls"]
    assert item["call_id"] == call_id
    assert (item["callee"], item["caller"]) == ("+*******2222", "+*******4444")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "unknown call 'no-such-call'"})
    # Nothing secret ever leaves: no keys, no callback or media URLs.
    for response in (one, fresh, listed):
        for secret in (SECRET, API_KEY, acs.access_key, "token", "stream_id"):
            assert secret not in response.text


async def test_hangup_ends_the_call_through_acs(
    acs: FakeCallAutomation, auth: dict[str, str]
) -> None:
    async with serve(acs) as server:
        call_id = str((await place(server, auth))["call_id"])
        response = await server.client.post(f"/api/v1/calls/{call_id}/hangup", headers=auth)
        assert response.status_code == 202
        assert response.json()["call_id"] == call_id
        (terminate,) = acs.of("terminate_call")
        assert terminate.path == f"/calling/callConnections/{call_id}:terminate"

        async def disconnected() -> bool:
            return await state_of(server, call_id) is CallState.DISCONNECTED

        await wait_until(disconnected)
        again = await server.client.post(f"/api/v1/calls/{call_id}/hangup", headers=auth)
        unknown = await server.client.post("/api/v1/calls/nope/hangup", headers=auth)
    # ACS no longer knows the call: its 404 is passed on, with its reason.
    assert again.status_code == 404
    assert again.json()["detail"].endswith("answered 404: 8522: Call not found.")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "unknown call 'nope'"})
    assert len(acs.of("terminate_call")) == 2


async def test_a_stalled_acs_is_a_504_with_the_reason(
    acs: FakeCallAutomation, auth: dict[str, str]
) -> None:
    acs.stall("create_call")
    async with serve(acs, timeout_secs=0.3) as server:
        started = time.monotonic()
        response = await server.client.post(
            "/api/v1/calls/initiate", json={"to": CALLEE}, headers=auth
        )
        elapsed = time.monotonic() - started
        ready = server.state.calls.status()
    assert elapsed < 1.5
    assert response.status_code == 504
    host = acs.endpoint.removeprefix("http://")
    assert response.json() == {"detail": f"create call: no answer from ACS at {host} within 0.3 s"}
    assert ready["status"] == "error" and ready["endpoint"] == host


async def test_an_unreachable_acs_is_a_502_with_the_reason(auth: dict[str, str]) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    gone = f"endpoint=http://127.0.0.1:{port}/;accesskey=a2V5"
    async with serve(acs_connection_string=gone) as server:
        started = time.monotonic()
        response = await server.client.post(
            "/api/v1/calls/initiate", json={"to": CALLEE}, headers=auth
        )
    assert time.monotonic() - started < 5
    assert response.status_code == 502
    assert response.json()["detail"].startswith(
        f"create call: cannot reach ACS at 127.0.0.1:{port}: "
    )
