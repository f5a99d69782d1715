"""Helpers for the telemetry tests: attach an observer to a harness call, find spans."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
from pydantic import SecretStr

from voicebot.config import Settings
from voicebot.server import create_app
from voicebot.server import metrics as metrics_endpoint
from voicebot.server.app import AppState
from voicebot.telemetry import CallObserver, Telemetry
from voicebot.testing import CallHarness

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml"

#: The demo pipeline without its VAD: tests report the caller's speech as a VAD would
#: (:func:`speak`), so no VAD inference runs on executor threads, which the virtual clock waits
#: for in real time, and every declared latency lands exactly.
SCRIPTED_VAD_PIPELINE = """\
name: scripted-vad
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
call: {idle_timeout_secs: 60}
processors:
  - stt: {provider: fake}
  - llm: {provider: fake}
  - tts: {provider: fake}
"""

#: The VAD's stop_secs as :func:`speak` reports it.
STOP_SECS = 0.2

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


async def speak(call: CallHarness, speech_ms: int = 1000) -> float:
    """The caller speaks for ``speech_ms`` (a tone in real-time 20 ms frames), reported as a VAD
    with ``stop_secs`` :data:`STOP_SECS` would; returns when the speech ended (s since start)."""
    await call.send(VADUserStartedSpeakingFrame(start_secs=0.2))
    t = np.arange(speech_ms * 16, dtype=np.float64) / 16000
    ended = await call.speak((np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes())
    await call.silence(STOP_SECS * 1000)
    await call.send(VADUserStoppedSpeakingFrame(stop_secs=STOP_SECS))
    return ended


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
