"""``WS /api/v1/realtime/conversation`` end to end: a real server on 127.0.0.1 and a free port, and a
browser played by a WebSocket client that streams a bank caller's WAV as PCM16 binary frames.

The pipeline is real Silero VAD with fake STT/LLM/TTS (the fake TTS speaks 50 ms of tone per
character), so what is said and how much audio comes back are exact.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks, read_wav
from voicebot.testing.wav import silence, split_frames

QUESTION = "What is my balance?"
ANSWER = "Your balance is 42 dollars."
GREETING = "Hello there."
REPO = Path(__file__).resolve().parents[2]
CALLER_WAV = REPO / "voicebot/testing/data/bank_balance.wav"

PIPELINE = f"""\
name: conversation-test
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
call: {{idle_timeout_secs: 30}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt: {{provider: fake, final_delay_ms: 100, transcripts: ["{QUESTION}"]}}
  - llm: {{provider: fake, ttft_ms: 100, greeting: {GREETING}, replies: ["{ANSWER}"]}}
  - tts: {{provider: fake, first_byte_ms: 50}}
"""


BANK_PIPELINE = f"""\
name: bank-conversation-test
transport: acs
audio: {{in_rate: 16000, out_rate: 16000}}
call: {{idle_timeout_secs: 30}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt: {{provider: fake, final_delay_ms: 100, transcripts: ["I need help with my bill."]}}
  - agents: {{store: {REPO / "agents"}}}
  - tts: {{provider: fake, first_byte_ms: 50, ms_per_char: 8}}
"""
"""The bank's agents (offline policy); sessions in this process's memory."""


@pytest.fixture
def serve(
    pipeline_file: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    for name in ("REDIS_URL", "VOICEBOT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)

    @asynccontextmanager
    async def run(text: str = PIPELINE) -> AsyncIterator[LocalServer]:
        pipeline = pipeline_file(text, "phone.yaml")
        async with no_leaked_tasks(grace_secs=2.0), LocalServer(local_settings(pipeline)) as server:
            yield server

    return run


def conversation_url(server: LocalServer, query: str = "") -> str:
    return f"{server.ws_base}/api/v1/realtime/conversation" + (f"?{query}" if query else "")


class Browser:
    """What the page keeps: bot audio bytes and the JSON events, read in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.audio = bytearray()
        self.events: list[dict[str, Any]] = []
        self.audio_after: dict[int, int] = {}  # event index -> audio bytes received before it

    async def read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.audio += message
                else:
                    self.audio_after[len(self.events)] = len(self.audio)
                    self.events.append(json.loads(message))
        except ConnectionClosed:
            pass

    async def stream(self, pcm: bytes, rate: int) -> None:
        """Send ``pcm`` as 20 ms binary frames in real time."""
        start = time.monotonic()
        for index, frame in enumerate(split_frames(pcm, rate)):
            await asyncio.sleep(max(0.0, start + index * 0.02 - time.monotonic()))
            await self.ws.send(frame)

    def finals(self) -> list[tuple[str, str]]:
        return [(e["role"], e["text"]) for e in self.events if e["type"] == "transcript" and e["final"]]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 24000])
async def test_a_spoken_question_gets_the_bot_answer_as_audio_and_events(
    serve: Any, rate: int
) -> None:
    caller = read_wav(CALLER_WAV, rate)
    bytes_per_ms = rate * 2 // 1000
    # Greeting and answer, at the page's rate: 50 ms of tone per character.
    expected = (len(GREETING) + len(ANSWER)) * 50 * bytes_per_ms
    async with serve() as server, connect(conversation_url(server), open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        session = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert session["type"] == "session" and session["sample_rate"] == rate
        assert session["session_id"].startswith("web-") and session["resumed"] is False
        browser = Browser(ws)
        reader = asyncio.create_task(browser.read())
        await browser.stream(silence(1000, rate), rate)  # the greeting plays
        await browser.stream(caller + silence(500, rate), rate)
        await wait_for(lambda: ("bot", ANSWER) in browser.finals(), 10)
        await wait_for(lambda: len(browser.audio) >= expected - 40 * bytes_per_ms, 5)
        await browser.stream(silence(200, rate), rate)
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 5)
        assert ws.close_code == 1000
        record = server.transcript(session["session_id"])
        assert record is not None and await record.wait_finished(3)

    assert browser.finals() == [("bot", GREETING), ("user", QUESTION), ("bot", ANSWER)]
    [latency] = browser.of_type("turn_latency")
    assert 100 < latency["voice_to_voice_ms"] < 5000
    assert browser.events[-1]["type"] == "call_ended"
    assert browser.events[-1]["outcome"] == "cancelled"
    assert {e.get("call_id") for e in browser.events if e["type"] != "interrupt"} == {
        session["session_id"]
    }
    assert abs(len(browser.audio) - expected) <= 40 * bytes_per_ms
    assert len(browser.audio) % 2 == 0
    assert record.outcome == "cancelled"
    assert [(u.role, u.text) for u in record.utterances] == browser.finals()


async def test_a_conversation_must_start_with_a_supported_rate(serve: Any) -> None:
    async with serve() as server:
        for first in ('{"type":"start","sample_rate":8000}', "hello", b"\x00\x00"):
            async with connect(conversation_url(server), open_timeout=5) as ws:
                await ws.send(first)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
                assert "first message must be" in closed.value.rcvd.reason


async def test_a_page_of_another_site_is_refused(serve: Any) -> None:
    async with serve() as server:
        url = conversation_url(server)
        async with connect(url, origin="http://evil.example", open_timeout=5) as ws:  # type: ignore[arg-type]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "origin not allowed")


@pytest.mark.slow
async def test_a_page_that_reconnects_with_its_session_id_resumes_without_a_greeting(
    serve: Any,
) -> None:
    async with serve(BANK_PIPELINE) as server:
        async with connect(conversation_url(server), open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            session = json.loads(await asyncio.wait_for(ws.recv(), 5))
            first = Browser(ws)
            reader = asyncio.create_task(first.read())
            await wait_for(lambda: bool(first.of_type("transcript")), 10)  # the greeting
            await first.stream(silence(1500, 16000) + read_wav(CALLER_WAV, 16000), 16000)
            await wait_for(lambda: len(first.finals()) >= 3, 10)  # greeting, caller, answer
            # The socket drops (no stop message): the page reconnects with its session id.
        await asyncio.wait_for(reader, 5)
        call_id = session["session_id"]
        record = server.transcript(call_id)
        assert record is not None and await record.wait_finished(3)

        url = conversation_url(server, f"session_id={call_id}")
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            again = json.loads(await asyncio.wait_for(ws.recv(), 5))
            second = Browser(ws)
            reader = asyncio.create_task(second.read())
            await second.stream(silence(1500, 16000), 16000)
            greeted_again = list(second.of_type("transcript"))
            await second.stream(read_wav(CALLER_WAV, 16000), 16000)
            await wait_for(lambda: any(r == "bot" for r, _ in second.finals()), 10)
            await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(reader, 5)

    assert (again["session_id"], again["resumed"]) == (call_id, True)
    assert session["resumed"] is False
    assert greeted_again == []
    [user, bot] = second.finals()[:2]
    assert user == ("user", "I need help with my bill.") and bot[0] == "bot" and bot[1]
    agents = {e["agent"] for e in second.of_type("transcript")}
    assert agents == {first.of_type("transcript")[-1]["agent"]}  # the same agent carries on
