"""SIGTERM drains a real ``voicebot serve`` process: no new calls, the active ones finish."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voicebot.acs.tokens import media_url
from voicebot.bench.servers import Server, running_server
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn
from voicebot.testing.wav import sample

pytestmark = pytest.mark.slow

PIPELINE = """\
name: drain-test
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
call: {idle_timeout_secs: 60}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 100, transcripts: ["one", "two", "three"]}
  - llm: {provider: fake, ttft_ms: 100, replies: ["First answer.", "Second answer.", "Third."]}
  - tts: {provider: fake, first_byte_ms: 50}
"""


TRANSPORTS = Path(__file__).resolve().parents[2] / "transports"


def _env(drain_timeout_secs: float) -> dict[str, str]:
    return {
        "VOICEBOT_DRAIN_TIMEOUT_SECS": f"{drain_timeout_secs:g}",
        "VOICEBOT_TRANSPORTS_DIR": str(TRANSPORTS),
    }


def _url(server: Server, call_id: str) -> str:
    return media_url(server.base_url, server.signing_key, call_id, 600)


async def _ready(server: Server) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"{server.base_url}/api/v1/health/ready")
    return response.status_code, response.json()


async def _until_draining(server: Server) -> dict[str, object]:
    for _ in range(50):
        code, body = await _ready(server)
        if code == 503:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError("readiness never said draining")


async def _close_of_new_call(server: Server) -> tuple[int, str]:
    async with connect(_url(server, "late-call"), open_timeout=5) as ws:
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


async def _exit_within(server: Server, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(server.process.wait(), seconds)
    return time.monotonic() - started


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "drain.yaml"
    path.write_text(PIPELINE)
    return path


async def test_sigterm_lets_the_active_call_finish_and_refuses_new_ones(
    pipeline: Path, tmp_path: Path
) -> None:
    async with running_server(
        "voicebot",
        pipeline,
        log_dir=tmp_path,
        max_calls=5,
        extra_env=_env(30),
    ) as server:
        async with ACSCallSimulator(_url(server, "call-a"), call_connection_id="call-a") as sim:
            await sim.play([Turn(sample("hello"), pause_after_ms=1500)])
            assert sim.report().turns[0].latency_ms is not None

            os.kill(server.pid, signal.SIGTERM)
            body = await _until_draining(server)
            assert body["status"] == "draining"
            assert await _close_of_new_call(server) == (1013, "worker draining")

            # The call in progress goes on: its next turn is answered.
            await sim.play([Turn(sample("hello"), pause_after_ms=1500)])
            assert sim.report().turns[1].latency_ms is not None
            assert server.alive()
        # The caller hung up: the worker has nothing left and stops.
        assert await _exit_within(server, 10) < 3


async def test_the_drain_ends_at_its_timeout(pipeline: Path, tmp_path: Path) -> None:
    async with running_server(
        "voicebot",
        pipeline,
        log_dir=tmp_path,
        max_calls=5,
        extra_env=_env(1),
    ) as server:
        async with ACSCallSimulator(_url(server, "call-b"), call_connection_id="call-b") as sim:
            await sim.play([Turn(sample("hello"), pause_after_ms=500)])
            os.kill(server.pid, signal.SIGTERM)
            # The caller stays on the line; the worker stops anyway, about a second later.
            elapsed = await _exit_within(server, 10)
            assert elapsed < 6
            await asyncio.sleep(0.2)
            assert sim.report().closed_by == "bot"
        assert "drain timeout of 1 s" in server.log_path.read_text()


async def test_a_second_signal_stops_at_once(pipeline: Path, tmp_path: Path) -> None:
    async with (
        running_server(
            "voicebot",
            pipeline,
            log_dir=tmp_path,
            max_calls=5,
            extra_env=_env(60),
        ) as server,
        ACSCallSimulator(_url(server, "call-c"), call_connection_id="call-c") as sim,
    ):
        await sim.silence(200)
        os.kill(server.pid, signal.SIGTERM)
        await _until_draining(server)
        os.kill(server.pid, signal.SIGTERM)
        assert await _exit_within(server, 8) < 8
