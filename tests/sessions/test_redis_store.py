"""What only the Redis store does: the key scheme on the wire, failures, timeouts, clusters."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from session_support import RedisServers, free_port

from voicebot.sessions import (
    CallSession,
    RedisSessionStore,
    SessionConflict,
    SessionStoreError,
    SessionStoreUnavailable,
    open_session,
)
from voicebot.sessions.redis_store import split_cluster_url


@pytest_asyncio.fixture
async def store(
    redis_url: str, session_env: str, redis_cleanup: None
) -> AsyncIterator[RedisSessionStore]:
    async with RedisSessionStore.from_url(redis_url, env=session_env, ttl_secs=120) as made:
        yield made


async def test_the_documented_key_holds_version_data_and_ttl(
    store: RedisSessionStore, raw_redis: Redis, session_env: str
) -> None:
    call_id = f"{uuid.uuid4()}"
    session = CallSession.new(call_id, agent="auth", caller="+15550100")
    await store.save(session)

    key = f"voicebot:{session_env}:call:{{{call_id}}}:session"
    assert store.key(call_id) == key
    fields = await raw_redis.hgetall(key)
    assert set(fields) == {b"version", b"data", b"token"}
    assert fields[b"version"] == b"1"
    assert CallSession.model_validate_json(fields[b"data"]).call.caller == "+15550100"
    assert 119_000 < await raw_redis.pttl(key) <= 120_000


async def test_a_retried_write_is_applied_once(store: RedisSessionStore, raw_redis: Redis) -> None:
    """A write whose reply was lost and that the client sends again reports success, once."""
    session = await store.save(CallSession.new(f"{uuid.uuid4()}"))
    key = store.key(session.call_id)
    data = session.model_dump_json()
    args = [1, data, 60_000, "token-of-one-write"]

    first = await store._save(keys=[key], args=args)
    again = await store._save(keys=[key], args=args)
    other = await store._save(keys=[key], args=[1, data, 60_000, "another-write"])

    assert first == again == [1, 2]
    assert other == [0, 2]
    assert await raw_redis.hget(key, "version") == b"2"


async def test_a_closed_port_is_unavailable_not_a_crash(session_env: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    async with RedisSessionStore.from_url(url, env=session_env, op_timeout_secs=0.5) as store:
        started = time.monotonic()
        with pytest.raises(SessionStoreUnavailable, match="load of call c1 failed"):
            await store.load("c1")
        with pytest.raises(SessionStoreUnavailable):
            await store.save(CallSession.new("c1"))
        health = await store.health()
        assert time.monotonic() - started < 3
    assert health.status == "degraded"
    assert health.latency_ms is None
    assert health.detail and "ConnectionError" in health.detail


async def test_a_server_that_never_answers_times_out(session_env: str) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RedisSessionStore.from_url(
            f"redis://127.0.0.1:{port}", env=session_env, op_timeout_secs=0.3
        ) as store:
            started = time.monotonic()
            with pytest.raises(SessionStoreUnavailable, match="Timeout"):
                await store.load("c1")
            elapsed = time.monotonic() - started
            assert (await store.health()).status == "degraded"
        assert 0.25 < elapsed < 1.5
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_cluster_urls_are_recognised() -> None:
    assert split_cluster_url("redis://h:6379/0") == ("redis://h:6379/0", False)
    assert split_cluster_url("redis+cluster://:pw@h:7000") == ("redis://:pw@h:7000", True)
    assert split_cluster_url("rediss+cluster://h:7000") == ("rediss://h:7000", True)
    assert split_cluster_url("redis://h:7000?cluster=true&ssl_cert_reqs=none") == (
        "redis://h:7000?ssl_cert_reqs=none",
        True,
    )
    assert split_cluster_url("redis://h:7000?cluster=false") == ("redis://h:7000", False)


def test_bad_settings_are_listed_at_once() -> None:
    with pytest.raises(ValueError) as raised:
        RedisSessionStore.from_url("redis://h", env="a b", prefix="x:y", ttl_secs=0)
    message = str(raised.value)
    assert "env" in message and "prefix" in message and "ttl_secs" in message


@pytest.mark.slow
async def test_a_redis_cluster_works_through_the_hash_tag(
    redis_servers: RedisServers, session_env: str
) -> None:
    node = await redis_servers.start(cluster=True)
    admin = Redis.from_url(node.url)
    try:
        await admin.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        for _ in range(200):
            if b"cluster_state:ok" in await admin.execute_command("CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.aclose()

    url = f"redis+cluster://127.0.0.1:{node.port}"
    async with (
        RedisSessionStore.from_url(url, env=session_env) as worker_a,
        RedisSessionStore.from_url(url, env=session_env) as worker_b,
    ):
        assert worker_a.is_cluster
        call_id = f"{uuid.uuid4()}"
        session = await worker_a.save(CallSession.new(call_id, agent="auth"))
        loaded = await worker_b.load(call_id)
        assert loaded is not None and loaded.version == 1

        await worker_b.save(loaded)
        with pytest.raises(SessionConflict):
            await worker_a.save(session)

        def add_turn(s: CallSession) -> None:
            s.turn_count += 1

        await asyncio.gather(
            *(store.update(call_id, add_turn) for store in [worker_a, worker_b] * 10)
        )
        final = await worker_a.load(call_id)
        assert final is not None and final.turn_count == 20
        assert (await worker_a.health()).status == "ok"


async def test_an_unreadable_stored_session_is_dropped_on_open(
    store: RedisSessionStore, raw_redis: Redis
) -> None:
    call_id = f"{uuid.uuid4()}"
    key = store.key(call_id)
    await raw_redis.hset(key, mapping={"version": 3, "data": '{"format": 99}', "token": "t"})

    with pytest.raises(SessionStoreError, match="unreadable"):
        await store.load(call_id)
    opened = await open_session(store, CallSession.new(call_id, agent="auth"))

    assert not opened.resumed and opened.store_available
    assert await raw_redis.exists(key) == 0
    await store.save(opened.session)
    assert opened.session.version == 1
