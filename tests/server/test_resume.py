"""The server's side of call sessions: the media stream opens and closes each call's session,
and readiness reports the store. (Resume over real Redis and two processes: tests/sessions.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from voicebot.server.sessions import call_sessions
from voicebot.simulate import LocalServer, local_settings
from voicebot.testing.acs_simulator import ACSCallSimulator

QUICK_PIPELINE = """\
name: quick-phone
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
call: {idle_timeout_secs: 30}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 100, transcripts: ["What is my balance?"]}
  - llm: {provider: fake, ttft_ms: 50, greeting: Hi., replies: ["Forty two."]}
  - tts: {provider: fake, first_byte_ms: 50, ms_per_char: 10}
"""


@pytest.fixture
def quick(pipeline_file: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL", "VOICEBOT_SESSION_STORE"):
        monkeypatch.delenv(name, raising=False)
    return pipeline_file(QUICK_PIPELINE, "quick.yaml")


async def test_each_call_has_a_live_session_until_its_socket_closes(quick: Path) -> None:
    async with LocalServer(local_settings(quick)) as server:
        sessions = call_sessions(server.state)
        async with ACSCallSimulator(server.media_url("call-1"), call_connection_id="call-1") as sim:
            await sim.silence(600)
            live = sessions.live("call-1")
            assert live is not None and not live.resumed
            assert live.session.call.correlation_id == sim.correlation_id
        for _ in range(100):  # the handler closes it once the pipeline has ended
            if "call-1" not in sessions:
                break
            await asyncio.sleep(0.02)
        assert "call-1" not in sessions

        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/api/v1/health/ready")
    body = response.json()
    assert body["status"] == "ready" and "sessions" not in body["degraded"]
    assert body["checks"]["sessions"] == {
        "backend": "memory",
        "status": "ok",
        "latency_ms": 0.0,
        "detail": None,
        "live_calls": 0,
        "degraded_calls": 0,
    }


async def test_a_call_id_that_cannot_key_a_session_is_refused(quick: Path) -> None:
    async with LocalServer(local_settings(quick)) as server:
        sim = ACSCallSimulator(server.media_url("stream-1"), call_connection_id="bad{id}")
        with pytest.raises(ConnectionClosed) as closed:
            async with sim:
                await sim.silence(2000)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "invalid call id")
