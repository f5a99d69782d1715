"""Helpers of the call-control tests: settings, a voicebot app on a real socket, polling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from voicebot.acs.client import CallAutomation
from voicebot.config import Settings
from voicebot.server import AppState, create_app
from voicebot.testing.fake_call_automation import FakeCallAutomation

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "pipelines" / "echo.yaml"
API_KEY = "test-api-key-0123456789"
SECRET = "callback-secret-abcdef"
SIGNING = "signing-secret-for-tests"


def settings(port: int = 8000, **overrides: Any) -> Settings:
    """Server settings for tests; call control is on when a connection string is given."""
    values: dict[str, Any] = {
        "pipeline": ECHO,
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "signing_secret": SIGNING,
        "api_key": API_KEY,
        "callback_secret": SECRET,
        **overrides,
    }
    return Settings(**values)


@dataclass
class Server:
    """A voicebot app on a real socket."""

    app: FastAPI
    base_url: str
    client: httpx.AsyncClient

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.voicebot
        return state

    def webhook(self, name: str, secret: str | None = SECRET) -> str:
        query = f"?secret={secret}" if secret is not None else ""
        return f"/api/v1/calls/{name}{query}"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(
    acs: FakeCallAutomation | None = None, *, timeout_secs: float | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    """Serve a voicebot app with uvicorn on a free port (call control against ``acs`` if given);
    ``timeout_secs`` shortens every Call Automation request's bound."""
    sock = free_socket()
    port = sock.getsockname()[1]
    if acs is not None:
        overrides.setdefault("acs_connection_string", acs.connection_string)
    app = create_app(settings(port, **overrides))
    state: AppState = app.state.voicebot
    if timeout_secs is not None and state.calls.client is not None:
        old = state.calls.client
        state.calls.client = CallAutomation(old.endpoint, _key(acs), timeout_secs=timeout_secs)
        await old.aclose()
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws="websockets-sansio")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # uvicorn has no "started" event to wait on: up to 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("uvicorn did not start within 5 s")
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield Server(app, base_url, client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def _key(acs: FakeCallAutomation | None) -> str:
    assert acs is not None
    return acs.access_key


async def wait_until(predicate: Callable[[], Any], timeout: float = 3.0) -> None:
    """Poll ``predicate`` (sync or async) until it is truthy, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)
