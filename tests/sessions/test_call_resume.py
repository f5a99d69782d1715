"""A call's state outlives its socket: resume on another ``voicebot serve`` process, and a call
that goes on while Redis is down. Real Redis, real servers, real sockets; nothing mocked."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from call_support import ServeProcess, bank_pipeline, listen, say, server_env
from session_support import RedisServers, free_port

from voicebot.acs.tokens import media_url
from voicebot.config import load_settings
from voicebot.sessions import CallSession, RedisSessionStore
from voicebot.simulate import LocalServer, local_settings
from voicebot.testing.acs_simulator import ACSCallSimulator

pytestmark = pytest.mark.slow

BALANCE_TEXT = "$1,234.56"
"""The demo customer's balance (agents/data/customers.yaml: 1234.56) as the bot says it."""

GREETING = "Welcome to"
"""How the auth agent's greeting begins (agents/auth.yaml)."""


@pytest_asyncio.fixture
async def stored(redis_url: str, session_env: str, redis_cleanup: None) -> AsyncIterator[Any]:
    """Read a call's session back from Redis, under the test's env."""
    store = RedisSessionStore.from_url(redis_url, env=session_env)
    try:
        yield store
    finally:
        await store.aclose()


async def wait_for_session(
    store: RedisSessionStore,
    call_id: str,
    check: Callable[[CallSession], bool],
    *,
    timeout: float = 10.0,
) -> CallSession:
    """The stored session of ``call_id`` once ``check`` holds for it (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: CallSession | None = None
    while loop.time() < deadline:
        try:
            last = await store.load(call_id)
        except Exception:  # Redis restarting
            last = None
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"stored session of {call_id} never passed the check; last: {last!r}")


def texts(session: CallSession, role: str) -> list[str]:
    """Every message of ``role`` in the session, all agents, in conversation order."""
    messages = [
        (m.model_extra.get("seq", 0) if m.model_extra else 0, m.content or "")
        for history in session.history.values()
        for m in history
        if m.role == role
    ]
    return [text for _, text in sorted(messages)]


async def test_a_dropped_call_resumes_on_another_process(
    tmp_path: Path, redis_url: str, session_env: str, stored: RedisSessionStore
) -> None:
    secret = secrets.token_urlsafe(32)
    env = server_env(secret=secret, redis_url=redis_url, session_env=session_env)
    before = bank_pipeline(
        tmp_path,
        "bank-before",
        ["I need help with my bill.", "My account number is 12345678.", "My PIN is 1234."],
    )
    after = bank_pipeline(tmp_path, "bank-after", ["What is my balance?"])
    first = ServeProcess(before, free_port(), env, tmp_path / "first.log")
    second = ServeProcess(after, free_port(), env, tmp_path / "second.log")
    key = load_settings(signing_secret=secret).media_signing_key()
    call_id = f"resume-{uuid.uuid4()}"

    async with first, second:
        sim = ACSCallSimulator(
            media_url(first.ws_base, key, call_id, 300), call_connection_id=call_id
        )
        async with sim:
            assert await listen(sim, since_ms=0) > 0, "no greeting on the first socket"
            for _ in range(3):  # bill, account number, PIN
                assert await say(sim) > 0
            verified = await wait_for_session(
                stored, call_id, lambda s: s.memory.get("verified") is True
            )
            assert verified.active_agent == "billing"  # auth handed the verified caller over
            await sim.drop()  # the network fails mid-call: no closing handshake

        again = ACSCallSimulator(
            media_url(second.ws_base, key, call_id, 300), call_connection_id=call_id
        )
        async with again:
            await again.silence(2000)
            assert again.bot_audio == [], "the resumed call was greeted again"
            assert await say(again) > 0, "no answer on the resumed call"
        ready = await second.ready()

    session = await wait_for_session(
        stored, call_id, lambda s: any(BALANCE_TEXT in t for t in texts(s, "assistant"))
    )
    said = texts(session, "user")
    assert said[-1] == "What is my balance?"
    assert said[:3] == [
        "I need help with my bill.",
        "My account number is 12345678.",
        "My PIN is 1234.",
    ]
    answer = texts(session, "assistant")[-1]
    assert BALANCE_TEXT in answer  # billing answered from what auth learned before the drop
    assert session.turn_count == 4
    assert session.active_agent == "billing"
    assert session.visits == {"auth": 1, "billing": 1}  # nobody entered (or greeted) again
    assert sum(GREETING in t for t in texts(session, "assistant")) <= 1
    # Tool call ids stay unique across the reconnection, so every result is still its own call's.
    messages = [m for history in session.history.values() for m in history]
    called = {
        call["id"]: call["function"]["name"]
        for m in messages
        for call in (m.model_extra or {}).get("tool_calls", [])
    }
    results = {
        (m.model_extra or {})["tool_call_id"]: m.content or "" for m in messages if m.role == "tool"
    }
    assert sorted(called.values()) == ["get_balance", "verify_identity"]
    assert set(results) == set(called)
    for call_id_, name in called.items():
        assert ('"verified": true' in results[call_id_]) == (name == "verify_identity")
    assert ready["status"] == "ready" and "sessions" not in ready["degraded"]
    sessions = ready["checks"]["sessions"]  # type: ignore[index]
    assert sessions["backend"] == "redis" and sessions["status"] == "ok"
    assert "resuming at turn 3" in second.log()


@pytest.mark.usefixtures("pipeline_file")  # the repository's transport profiles
async def test_a_call_goes_on_while_redis_is_down(
    tmp_path: Path, redis_servers: RedisServers, session_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = await redis_servers.start()
    monkeypatch.setenv("REDIS_URL", redis.url)
    monkeypatch.setenv("VOICEBOT_SESSION_ENV", session_env)
    pipeline = bank_pipeline(
        tmp_path,
        "bank",
        [
            "I need help with my bill.",
            "My account number is 12345678.",
            "My PIN is 1234.",
            "What is my balance?",
        ],
    )
    store = RedisSessionStore.from_url(redis.url, env=session_env)
    call_id = f"degraded-{uuid.uuid4()}"

    async def readiness(server: LocalServer) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/api/v1/health/ready")
        body: dict[str, Any] = response.json()
        return body

    try:
        async with LocalServer(local_settings(pipeline)) as server:
            sim = ACSCallSimulator(server.media_url(call_id), call_connection_id=call_id)
            async with sim:
                assert await listen(sim, since_ms=0) > 0
                assert await say(sim) > 0  # "I need help with my bill."
                await wait_for_session(store, call_id, lambda s: s.turn_count == 1)

                redis.kill()  # a crash: its data is gone too
                assert await say(sim) > 0, "the call stopped with Redis"  # account number
                ready = await readiness(server)
                for _ in range(50):
                    if ready["checks"]["sessions"]["degraded_calls"] == 1:
                        break
                    await asyncio.sleep(0.1)
                    ready = await readiness(server)
                assert ready["status"] == "ready"
                assert "sessions" in ready["degraded"]
                sessions = ready["checks"]["sessions"]
                assert sessions["status"] == "degraded" and sessions["degraded_calls"] == 1
                assert sessions["backend"] == "redis" and sessions["detail"]

                assert await say(sim) > 0  # the PIN: verified while Redis is down
                redis.launch()
                await redis.wait_ready()
                session = await wait_for_session(
                    store, call_id, lambda s: s.turn_count == 3 and s.memory.get("verified")
                )
                assert session.active_agent == "billing"
                assert texts(session, "user") == [
                    "I need help with my bill.",
                    "My account number is 12345678.",
                    "My PIN is 1234.",
                ]
                for _ in range(50):
                    ready = await readiness(server)
                    if ready["checks"]["sessions"]["status"] == "ok":
                        break
                    await asyncio.sleep(0.1)
                assert "sessions" not in ready["degraded"]
                assert ready["checks"]["sessions"]["degraded_calls"] == 0

                assert await say(sim) > 0  # what is my balance?
            session = await wait_for_session(
                store, call_id, lambda s: any(BALANCE_TEXT in t for t in texts(s, "assistant"))
            )
            assert session.turn_count == 4
    finally:
        await store.aclose()
