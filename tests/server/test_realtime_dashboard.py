"""``WS /api/v1/realtime/dashboard`` end to end: a real server on 127.0.0.1 and a free port, a call
placed by the ACS simulator, and a dashboard client over a real socket.

The pipeline is real Silero VAD with fake STT/LLM/TTS, so what is said is exact.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.server.realtime import dashboard_token
from voicebot.sessions.keys import env_pattern
from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks, sample
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn

QUESTION = "What is my balance?"
ANSWER = "Your balance is 42 dollars."
GREETING = "Hello there."

PIPELINE = f"""\
name: dashboard-test
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
call: {{idle_timeout_secs: 30}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt: {{provider: fake, final_delay_ms: 100, transcripts: ["{QUESTION}"]}}
  - llm: {{provider: fake, ttft_ms: 100, greeting: {GREETING}, replies: ["{ANSWER}"]}}
  - tts: {{provider: fake, first_byte_ms: 50}}
"""


@pytest.fixture
def serve(
    pipeline_file: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> Callable[[], Any]:
    """``async with serve() as server``: a real server with the in-memory event bus."""
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL", "VOICEBOT_DASHBOARD_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    @asynccontextmanager
    async def run() -> AsyncIterator[LocalServer]:
        pipeline = pipeline_file(PIPELINE, "phone.yaml")
        async with no_leaked_tasks(grace_secs=2.0), LocalServer(local_settings(pipeline)) as server:
            yield server

    return run


def dashboard_url(server: LocalServer, **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.ws_base}/api/v1/realtime/dashboard" + (f"?{params}" if params else "")


async def refusal(url: str, first: str | None = None) -> tuple[int, str]:
    async with connect(url, open_timeout=5) as ws:
        try:
            if first is not None:
                await ws.send(first)
            await asyncio.wait_for(ws.recv(), 7)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("the server kept the connection open")


async def receive(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message, dict)
    return message


async def events_until_end(ws: ClientConnection, call_id: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = await receive(ws)
        events.append(event)
        if event["type"] == "call_ended" and event["call_id"] == call_id:
            return events


async def test_a_dashboard_without_a_valid_token_is_closed_with_1008(serve: Any) -> None:
    async with serve() as server:
        forged = dashboard_token(b"another deployment's key")
        assert await refusal(dashboard_url(server, token=forged)) == (
            1008,
            "invalid token signature",
        )
        assert await refusal(dashboard_url(server), '{"type":"subscribe"}') == (
            1008,
            "missing token",
        )
        expired = dashboard_token(server.state.signing_key, ttl_secs=-10)
        assert await refusal(dashboard_url(server), json.dumps({"token": expired})) == (
            1008,
            "token expired",
        )


@pytest.mark.slow
async def test_the_events_of_a_simulated_call_reach_the_dashboard(serve: Any) -> None:
    async with serve() as server:
        token = dashboard_token(server.state.signing_key)
        async with connect(dashboard_url(server, token=token), open_timeout=5) as ws:
            hello = await receive(ws)
            assert hello["type"] == "hello" and hello["subscription"] is None
            assert (await receive(ws)) == {"type": "snapshot", "calls": []}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                ready = (await http.get("/api/v1/health/ready")).json()
            [client] = ready["checks"]["dashboard"]["clients"]
            assert client["client_id"] == hello["client_id"] and client["subscription"] == "*"
            assert client["worker"] == hello["worker"] == ready["checks"]["dashboard"]["worker"]
            assert ready["checks"]["events"]["status"] == "ok"

            async with ACSCallSimulator(
                server.media_url("call-1"), call_connection_id="call-1"
            ) as sim:
                await sim.silence(1500)  # the greeting
                await sim.play([Turn(sample("balance"), pause_after_ms=3000)])
            events = await events_until_end(ws, "call-1")

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert events[0]["type"] == "call_started" and events[0]["call_id"] == "call-1"
    assert events[0]["source"] == "acs" and events[0]["pipeline"] == "dashboard-test"
    finals = [(e["role"], e["text"]) for e in by_type["transcript"] if e["final"]]
    assert finals == [("bot", GREETING), ("user", QUESTION), ("bot", ANSWER)]
    interims = [e for e in by_type["transcript"] if not e["final"]]
    # The bot's text as it is synthesized; the caller's interim shares its final's number.
    assert [(e["role"], e["text"], e["utterance"]) for e in interims] == [
        ("bot", GREETING, 1),
        ("user", "What", 2),
        ("bot", ANSWER, 3),
    ]
    [latency] = by_type["turn_latency"]
    assert latency["turn"] == 1 and 100 < latency["voice_to_voice_ms"] < 5000
    assert sum(latency["stages_ms"].values()) == pytest.approx(latency["voice_to_voice_ms"], abs=1)
    assert events[-1]["outcome"] == "cancelled"  # the caller hung up
    assert {e["worker"] for e in events} == {hello["worker"]}


@pytest.mark.slow
async def test_a_dashboard_watching_one_call_sees_only_that_call(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_DASHBOARD_TOKEN", "a-fixed-token-of-the-deployment")
    async with serve() as server:
        url = dashboard_url(server)
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"token": "a-fixed-token-of-the-deployment", "call_id": "b"}))
            assert (await receive(ws))["subscription"] == "b"
            await receive(ws)  # the snapshot
            for call_id in ("a", "b"):
                async with ACSCallSimulator(
                    server.media_url(call_id), call_connection_id=call_id
                ) as sim:
                    await sim.silence(300)
            events = await events_until_end(ws, "b")
    assert {e["call_id"] for e in events} == {"b"}


@pytest.mark.slow
async def test_a_call_on_one_worker_reaches_a_dashboard_on_another_through_redis(
    pipeline_file: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    url = redis_url
    env = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("VOICEBOT_SESSION_ENV", env)  # the test's keys and events channel
    monkeypatch.delenv("VOICEBOT_REDIS_URL", raising=False)
    pipeline = pipeline_file(PIPELINE, "phone.yaml")
    async with (
        no_leaked_tasks(grace_secs=2.0),
        LocalServer(local_settings(pipeline)) as calls,
        LocalServer(local_settings(pipeline)) as watcher,
    ):
        token = dashboard_token(watcher.state.signing_key)
        async with connect(dashboard_url(watcher, token=token), open_timeout=5) as ws:
            await receive(ws)  # hello
            await receive(ws)  # snapshot
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{watcher.port}") as http:
                for _ in range(100):
                    ready = (await http.get("/api/v1/health/ready")).json()
                    if ready["checks"]["events"]["status"] == "ok":
                        break
                    await asyncio.sleep(0.05)
            events_check = ready["checks"]["events"]
            assert events_check["backend"] == "redis" and events_check["relay"]["status"] == "ok"
            async with ACSCallSimulator(
                calls.media_url("call-1"), call_connection_id="call-1"
            ) as sim:
                await sim.silence(1500)
                await sim.play([Turn(sample("balance"), pause_after_ms=3000)])
            events = await events_until_end(ws, "call-1")
        assert watcher.state.active.get("call-1") is None  # the call ran on the other worker

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=env_pattern(env=env))]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    finals = [(e["role"], e["text"]) for e in events if e["type"] == "transcript" and e["final"]]
    assert finals == [("bot", GREETING), ("user", QUESTION), ("bot", ANSWER)]
    assert [e["type"] for e in events][0] == "call_started"
    assert any(e["type"] == "turn_latency" for e in events)
