"""``voicebot serve --workers 2``: two processes on one port, calls on both, one stop for all."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from voicebot.acs.tokens import media_url
from voicebot.bench.procstat import process_tree
from voicebot.bench.servers import running_server
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn
from voicebot.testing.wav import sample

pytestmark = pytest.mark.slow

PIPELINE = """\
name: workers-test
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: fake, final_delay_ms: 100, transcripts: ["one"]}
  - llm: {provider: fake, ttft_ms: 100, replies: ["An answer."]}
  - tts: {provider: fake, first_byte_ms: 50}
"""
ENV = {"VOICEBOT_TRANSPORTS_DIR": str(Path(__file__).resolve().parents[2] / "transports")}


async def _workers_answering(base_url: str, attempts: int = 100) -> set[str]:
    """The workers that answered readiness, each request on a fresh connection."""
    seen: set[str] = set()
    for _ in range(attempts):
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{base_url}/api/v1/health/ready")
        assert response.status_code == 200
        seen.add(response.json()["worker"])
        if len(seen) == 2:
            break
    return seen


async def test_two_workers_share_the_port_take_calls_and_stop_together(tmp_path: Path) -> None:
    pipeline = tmp_path / "workers.yaml"
    pipeline.write_text(PIPELINE)
    async with running_server(
        "voicebot", pipeline, log_dir=tmp_path, max_calls=5, extra_env=ENV, workers=2
    ) as server:
        children = process_tree(server.pid)[1:]
        workers = await _workers_answering(server.base_url)
        assert len(workers) == 2
        assert {int(w.rsplit(":", 1)[1]) for w in workers} <= set(children)

        # A URL signed by the parent's key is accepted by whichever worker takes the call.
        async def call(call_id: str) -> float | None:
            url = media_url(server.base_url, server.signing_key, call_id, 600)
            async with ACSCallSimulator(url, call_connection_id=call_id) as sim:
                await sim.play([Turn(sample("hello"), pause_after_ms=1500)])
                return sim.report().turns[0].latency_ms

        latencies = await asyncio.gather(*(call(f"call-{i}") for i in range(4)))
        assert all(latency is not None for latency in latencies), latencies

        os.kill(server.pid, signal.SIGTERM)
        await asyncio.wait_for(server.process.wait(), 15)
        for _ in range(50):  # the workers and multiprocessing's helper end with the parent
            left = [pid for pid in children if not _gone(pid)]
            if not left:
                break
            await asyncio.sleep(0.1)
        assert not left, f"processes left behind: {left}"


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
