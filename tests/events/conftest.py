"""Real Redis for the event bus tests (the session tests' helpers; nothing here mocks Redis)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sessions"))

from session_support import (
    RedisServer,
    RedisServers,
    answers_ping,
    free_port,
    no_redis,
    redis_server_binary,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$REDIS_URL``, else the Redis on 127.0.0.1:6379, else a throwaway ``redis-server``."""
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        yield from_env
        return
    if answers_ping("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    binary = redis_server_binary()
    if binary is None:
        no_redis("no Redis at $REDIS_URL or 127.0.0.1:6379 and no redis-server binary")
        return
    server = RedisServer(binary, free_port(), tmp_path_factory.mktemp("redis"))
    server.launch()
    try:
        server.wait_ready_blocking()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    """Throwaway ``redis-server`` processes a test can kill and restart."""
    binary = redis_server_binary()
    if binary is None:
        no_redis("no redis-server binary to start a throwaway server with")
    assert binary is not None
    servers = RedisServers(binary, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def channel() -> str:
    """A pub/sub channel of this test alone."""
    return f"voicebot:test-{uuid.uuid4().hex[:12]}:events"
