"""Helpers for the telemetry tests: attach an observer to a harness call, find spans."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import SecretStr

from voicebot.config import Settings
from voicebot.server import create_app
from voicebot.server import metrics as metrics_endpoint
from voicebot.server.app import AppState
from voicebot.telemetry import CallObserver, Telemetry
from voicebot.testing import CallHarness

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml"

Spans = tuple[ReadableSpan, ...] | list[ReadableSpan]


def observe(harness: CallHarness, telemetry: Telemetry, **kwargs: object) -> CallObserver:
    """Attach a call observer to ``harness`` (before it starts), on its virtual clock.

    The harness has no output transport: its first bot audio is the first audio frame pushed.
    """
    observer = telemetry.call(
        harness.call.call_id,
        clock=lambda: asyncio.get_running_loop().time(),
        output_transport=False,
        **kwargs,  # type: ignore[arg-type]
    )
    # CallHarness takes no observers of its own yet; its runner reads this list when it starts.
    harness.call._observers.append(observer)
    return observer


def by_name(spans: Spans, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: Spans, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.parent is not None and s.parent.span_id == parent.context.span_id  # type: ignore[union-attr]
    ]


def server_app() -> FastAPI:
    """A server app on the demo pipeline, with the metrics endpoint mounted."""
    app = create_app(Settings(pipeline=DEMO, signing_secret=SecretStr(secrets.token_hex(16))))
    if not any(getattr(route, "path", "") == "/api/v1/metrics" for route in app.routes):
        app.include_router(metrics_endpoint.router, prefix="/api/v1")
    return app


def state(app: FastAPI) -> AppState:
    voicebot: AppState = app.state.voicebot
    return voicebot


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 and a free port in this loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()
