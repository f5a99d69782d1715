"""``WS /api/v1/media/stream`` end to end: a real server on 127.0.0.1, ACS played by the simulator.

Every test starts a voicebot server (uvicorn, a free port, this test's event loop) running a phone
pipeline on real Silero VAD and fake STT/LLM/TTS, and places calls on it over real sockets. Times
are real: tolerances on timing are generous, content is exact.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.acs.tokens import media_url, sign
from voicebot.processors.transcript import CallTranscript
from voicebot.simulate import LocalServer, local_settings
from voicebot.testing import no_leaked_tasks, read_wav, sample
from voicebot.testing.acs_simulator import ACSCallSimulator, Turn
from voicebot.testing.wav import split_frames

QUESTION = "What is my balance?"
ANSWER = "Your balance is 42 dollars and 17 cents."
"""The bot's answer to every question: 2 s of tone (the fake TTS speaks 50 ms per character)."""
ANSWER_BYTES = 2 * 16000 * 2
GREETING = "Hello there."
"""The greeting of the ``greeting=True`` pipeline: 0.6 s of tone."""
GREETING_MS = 600


def phone_pipeline(greeting: bool) -> str:
    """Real Silero VAD, fake STT/LLM/TTS: the caller asks, the bot answers ANSWER."""
    greeting_line = f"      greeting: {GREETING}\n" if greeting else ""
    return (
        "name: test-phone\n"
        "transport: acs\n"
        "audio: {in_rate: 16000, out_rate: 16000}\n"
        "call: {idle_timeout_secs: 30}\n"
        "processors:\n"
        "  - vad: {provider: silero, stop_secs: 0.2}\n"
        "  - stt:\n"
        "      provider: fake\n"
        "      final_delay_ms: 100\n"
        f'      transcripts: ["{QUESTION}", "And my last payment?", "Thanks."]\n'
        "  - llm:\n"
        "      provider: fake\n"
        "      ttft_ms: 100\n"
        f"{greeting_line}"
        f'      replies: ["{ANSWER}", "{ANSWER}", "{ANSWER}"]\n'
        "  - tts: {provider: fake, first_byte_ms: 50}\n"
    )


ServerFactory = Callable[..., AbstractAsyncContextManager[LocalServer]]


@pytest_asyncio.fixture
async def phone_server(pipeline_file: Callable[[str, str], Path]) -> ServerFactory:
    """``async with phone_server(greeting=False, **settings) as server:`` runs a real server.

    It listens on 127.0.0.1 and a free port in this test's event loop, is stopped when the
    block ends, and the block fails if the server left any task running.
    """

    @asynccontextmanager
    async def serve(greeting: bool = False, **settings: Any) -> AsyncIterator[LocalServer]:
        pipeline = pipeline_file(phone_pipeline(greeting), "phone.yaml")
        async with (
            no_leaked_tasks(grace_secs=2.0),
            LocalServer(local_settings(pipeline, **settings)) as server,
        ):
            yield server

    return serve


def simulator(server: LocalServer, call_id: str, **kwargs: Any) -> ACSCallSimulator:
    return ACSCallSimulator(server.media_url(call_id), call_connection_id=call_id, **kwargs)


async def silence_until(
    sim: ACSCallSimulator, condition: Callable[[], bool], timeout_ms: int = 5000
) -> None:
    """Keep the caller silent until ``condition()`` holds (checked every 20 ms)."""
    for _ in range(timeout_ms // 20):
        if condition():
            return
        await sim.silence(20)
    raise TimeoutError(f"condition not met within {timeout_ms} ms of call time")


def bot_bytes(sim: ACSCallSimulator, since: int = 0) -> int:
    """Bytes of bot audio received, from the ``since``-th chunk on."""
    return sum(len(c.pcm) for c in sim.bot_audio[since:])


async def finished(server: LocalServer, call_id: str) -> CallTranscript:
    """The server's record of ``call_id`` once the call has ended there."""
    record = server.transcript(call_id)
    assert record is not None
    assert await record.wait_finished(timeout=3.0)
    return record


def said(record: CallTranscript) -> list[tuple[str, str]]:
    return [(u.role, u.text) for u in record.utterances]


# --- ACS peers the simulator cannot play --------------------------------------------------------


def metadata_message(rate: int = 16000) -> str:
    body = {"subscriptionId": "s", "encoding": "PCM", "sampleRate": rate, "channels": 1}
    return json.dumps({"kind": "AudioMetadata", "audioMetadata": {**body, "length": 640}})


def audio_message(pcm: bytes) -> str:
    data = base64.b64encode(pcm).decode()
    return json.dumps({"kind": "AudioData", "audioData": {"data": data, "silent": False}})


async def stream(ws: ClientConnection, pcm: bytes) -> None:
    """Send 16 kHz ``pcm`` as 20 ms AudioData frames in real time."""
    start = time.monotonic()
    for index, frame in enumerate(split_frames(pcm, 16000)):
        await asyncio.sleep(max(0.0, start + index * 0.02 - time.monotonic()))
        await ws.send(audio_message(frame))


async def close_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Connect as ACS would, send AudioMetadata; the code and reason the server closed with."""
    async with connect(url, additional_headers=headers or {}, open_timeout=5) as ws:
        try:
            await ws.send(metadata_message())
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("the server kept the connection open")


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; TimeoutError after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


# --- a call -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_greeting_then_an_answer_to_a_spoken_question(phone_server: ServerFactory) -> None:
    async with phone_server(greeting=True) as server:
        async with simulator(server, "call-1") as sim:
            await silence_until(sim, lambda: bot_bytes(sim) >= GREETING_MS * 32)
            await sim.silence(200)
            greeting = sim.bot_audio
            await sim.play([Turn(sample("balance"), pause_after_ms=0)])
            answered = len(greeting)
            await silence_until(sim, lambda: bot_bytes(sim, answered) >= ANSWER_BYTES)
            await sim.silence(200)
        report = sim.report()
        record = await finished(server, "call-1")

    assert sum(len(c.pcm) for c in greeting) == GREETING_MS * 32  # 16 kHz PCM16: 32 bytes/ms
    [turn] = report.turns
    assert turn.latency_ms is not None and turn.first_bot_audio_ms is not None
    assert 300 < turn.latency_ms < 3000, report
    answer = [c for c in sim.bot_audio if c.t_ms >= turn.first_bot_audio_ms]
    assert sum(len(c.pcm) for c in answer) == ANSWER_BYTES
    assert said(record) == [("bot", GREETING), ("user", QUESTION), ("bot", ANSWER)]
    assert record.outcome == "cancelled"  # the caller hung up
    assert not record.bad_input
    assert report.closed_by == "caller" and report.bad_bot_messages == 0


@pytest.mark.slow
async def test_barge_in_stops_the_answer(phone_server: ServerFactory) -> None:
    async with phone_server() as server, simulator(server, "call-1") as sim:
        await sim.play([Turn(sample("balance"), pause_after_ms=0)])
        await silence_until(sim, lambda: bool(sim.bot_audio))
        answer_start = sim.bot_audio[0].t_ms
        await sim.silence(500)
        stops_before = len(sim.stop_audio_ms)
        await sim.play([Turn(sample("balance"), pause_after_ms=0)])  # the caller barges in
        barge_in_end = sim.report().turns[1].speech_end_ms
        await silence_until(sim, lambda: sim.report().turns[1].latency_ms is not None)
        await sim.silence(300)
        report = sim.report()

    assert barge_in_end is not None
    [stop, *_] = report.stop_audio_ms[stops_before:]
    first_answer = [c for c in sim.bot_audio if answer_start <= c.t_ms <= stop]
    assert 0 < sum(len(c.pcm) for c in first_answer) < ANSWER_BYTES  # cut short
    # After StopAudio, nothing more of that answer: the line is quiet until the next one.
    assert not [c for c in sim.bot_audio if stop < c.t_ms <= barge_in_end]
    assert report.turns[1].latency_ms is not None and report.turns[1].latency_ms < 3000
    # What the caller heard: the first answer up to StopAudio, then the second one.
    heard_ms = len(sim.bot_playout()) / 32 - answer_start
    assert heard_ms > 2000


# --- bad input ----------------------------------------------------------------------------------

BAD_MESSAGES: dict[str, str | bytes] = {
    "invalid_json": '{"kind": "AudioData", ',
    "unknown_kind": json.dumps({"kind": "TranscriptionData", "transcriptionData": {}}),
    "invalid_base64": json.dumps({"kind": "AudioData", "audioData": {"data": "!!!!"}}),
    "odd_length_pcm": json.dumps({"kind": "AudioData", "audioData": {"data": "AAAA"}}),
    "oversize": json.dumps({"kind": "AudioData", "audioData": {"data": "A" * 70_000}}),
    "binary_frame": b"\x00\x01\x02\x03",
    "unsupported_rate": metadata_message(8000),
    "malformed": json.dumps({"kind": "AudioData", "audioData": "AAAA"}),
    "invalid_dtmf": json.dumps({"kind": "DtmfData", "dtmfData": {"data": "x"}}),
}


@pytest.mark.slow
async def test_every_kind_of_bad_message_is_survived_and_counted(
    phone_server: ServerFactory,
) -> None:
    async with phone_server() as server:
        async with simulator(server, "call-1") as sim:
            await sim.silence(100)
            for message in BAD_MESSAGES.values():
                await sim.send_raw(message)
            await sim.play([Turn(sample("balance"), pause_after_ms=3000)])
        report = sim.report()
        record = await finished(server, "call-1")

    assert report.closed_by == "caller"
    assert report.turns[0].latency_ms is not None  # still answers
    assert said(record) == [("user", QUESTION), ("bot", ANSWER)]
    assert record.bad_input == dict.fromkeys(BAD_MESSAGES, 1)


@pytest.mark.slow
async def test_audio_before_metadata_is_survived_and_counted(
    phone_server: ServerFactory,
) -> None:
    async with phone_server() as server:
        url = server.media_url("call-1")
        # max_queue=None: the bot audio this test does not read must not hold up the close.
        headers = {"x-ms-call-connection-id": "call-1"}
        async with connect(url, additional_headers=headers, max_queue=None) as ws:
            await ws.send(audio_message(bytes(640)))
            await ws.send(metadata_message())
            await stream(ws, read_wav(sample("balance"), 16000) + bytes(32000))
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            while first.get("Kind") != "AudioData":
                first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        record = await finished(server, "call-1")

    assert record.bad_input == {"audio_before_metadata": 1}
    assert said(record)[:2] == [("user", QUESTION), ("bot", ANSWER)]


FLOODS: dict[int, str | bytes] = {
    1007: BAD_MESSAGES["invalid_json"],
    1008: BAD_MESSAGES["binary_frame"],
    1009: BAD_MESSAGES["oversize"],
}


@pytest.mark.slow
async def test_a_flood_closes_only_its_own_call(phone_server: ServerFactory) -> None:
    async def flood(sim: ACSCallSimulator, message: str | bytes) -> None:
        for _ in range(60):
            try:
                await sim.send_raw(message)
            except ConnectionClosed:
                return

    async with phone_server() as server:
        async with simulator(server, "victim") as victim:
            flooders = {code: simulator(server, f"flood-{code}") for code in FLOODS}
            for sim in flooders.values():
                await sim.__aenter__()
            try:
                question = asyncio.create_task(
                    victim.play([Turn(sample("balance"), pause_after_ms=3000)])
                )
                await asyncio.sleep(0.3)  # flood while the victim is speaking
                await asyncio.gather(*(flood(flooders[c], FLOODS[c]) for c in FLOODS))
                freed = await wait_until(
                    lambda: all(f"flood-{c}" not in server.state.active for c in FLOODS), 1.0
                )
                await question
            finally:
                for sim in flooders.values():
                    await sim.__aexit__(None, None, None)
        victim_report = victim.report()
        victim_record = await finished(server, "victim")
        flood_records = {c: await finished(server, f"flood-{c}") for c in FLOODS}

    for code, sim in flooders.items():
        report = sim.report()
        assert (report.closed_by, report.close_code) == ("bot", code)
        assert report.close_reason.startswith("flood of ")
        bad = flood_records[code].bad_input
        assert sum(bad.values()) > 25 and len(bad) == 1
    assert freed < 1.0
    assert victim_report.closed_by == "caller"
    assert victim_report.turns[0].latency_ms is not None
    assert said(victim_record) == [("user", QUESTION), ("bot", ANSWER)]
    assert not victim_record.bad_input


# --- who may connect ----------------------------------------------------------------------------


async def test_refused_without_a_valid_token(phone_server: ServerFactory) -> None:
    async with phone_server() as server:
        base = f"{server.ws_base}/api/v1/media/stream"
        key = server.state.signing_key
        expired = sign(key, "call-1", 60, now=time.time() - 3600)
        cases = {
            f"{base}?call_id=call-1": "missing token",
            f"{base}?call_id=call-1&token=abc": "malformed token",
            media_url(server.ws_base, key, "other-call", 60).replace("other-call", "call-1"): (
                "invalid token signature"
            ),
            media_url(server.ws_base, b"not the key", "call-1", 60): "invalid token signature",
            f"{base}?call_id=call-1&token={expired}": "token expired",
            f"{base}?token={sign(key, 'call-1', 60)}": "missing call id",
        }
        for url, reason in cases.items():
            assert await close_of(url) == (1008, reason), url
        assert len(server.state.active) == 0


async def test_over_the_call_limit_is_try_again_later(phone_server: ServerFactory) -> None:
    async with phone_server(max_calls=1) as server, simulator(server, "call-1"):
        await wait_until(lambda: "call-1" in server.state.active, 2.0)
        assert await close_of(server.media_url("call-2")) == (1013, "worker at call limit")
        assert [c.call_id for c in server.state.active] == ["call-1"]


async def test_a_second_connection_for_a_connected_call_is_refused(
    phone_server: ServerFactory,
) -> None:
    async with phone_server() as server, simulator(server, "call-1") as sim:
        await wait_until(lambda: "call-1" in server.state.active, 2.0)
        assert await close_of(server.media_url("call-1")) == (1008, "call already connected")
        await sim.silence(100)
        assert "call-1" in server.state.active
        assert sim.report().closed_by is None


async def test_a_call_at_an_unsupported_rate_is_closed_as_a_protocol_violation(
    phone_server: ServerFactory,
) -> None:
    async with phone_server() as server:
        url = server.media_url("call-1")
        async with connect(url, max_queue=None) as ws:
            await ws.send(metadata_message(rate=8000))
            with pytest.raises(ConnectionClosed) as closed:
                await stream(ws, bytes(16000 * 2 * 2))  # 2 s, but the flood rule stops it
                await asyncio.wait_for(ws.recv(), 5)
        record = await finished(server, "call-1")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert record.bad_input["unsupported_rate"] == 1
    assert sum(record.bad_input.values()) > 25  # the flood rule


async def test_call_id_from_the_header_else_from_the_query(phone_server: ServerFactory) -> None:
    async with phone_server() as server:
        key = server.state.signing_key
        # The token covers the URL's call_id (signed before ACS assigned its id); the call is
        # then known by ACS's id from the header.
        signed = f"{server.ws_base}/api/v1/media/stream?call_id=q-1&token=" + sign(key, "q-1", 60)
        async with connect(signed, additional_headers={"x-ms-call-connection-id": "h-1"}) as ws:
            await ws.send(metadata_message())
            await wait_until(lambda: "h-1" in server.state.active, 2.0)
        # No header: the call_id query parameter names the call.
        async with connect(server.media_url("q-2")) as ws:
            await ws.send(metadata_message())
            await wait_until(lambda: "q-2" in server.state.active, 2.0)
        # A token signed for another id does not admit this URL's call_id.
        forged = f"{server.ws_base}/api/v1/media/stream?call_id=q-3&token=" + sign(key, "h-3", 60)
        refused = await close_of(forged, {"x-ms-call-connection-id": "h-3"})
        assert refused == (1008, "invalid token signature")
        await wait_until(lambda: len(server.state.active) == 0, 2.0)


async def test_caller_hang_up_frees_the_call_within_a_second(phone_server: ServerFactory) -> None:
    async with phone_server() as server:
        sim = simulator(server, "call-1")
        async with sim:
            await wait_until(lambda: "call-1" in server.state.active, 2.0)
            await sim.silence(200)
        freed = await wait_until(lambda: len(server.state.active) == 0, 1.0)
        record = await finished(server, "call-1")
    assert freed < 1.0
    assert record.outcome == "cancelled"


# --- outbound audio -----------------------------------------------------------------------------


async def test_24khz_call_on_a_16khz_pipeline_gets_960_byte_frames_every_20ms(
    phone_server: ServerFactory,
) -> None:
    async with phone_server(greeting=True) as server:
        async with simulator(server, "call-1", sample_rate=24000) as sim:
            await silence_until(sim, lambda: bot_bytes(sim) >= GREETING_MS * 48 - 960)
            await sim.silence(200)
        chunks = sim.bot_audio

    sizes = [len(c.pcm) for c in chunks]
    assert set(sizes[:-1]) == {960}, sizes  # 20 ms at 24 kHz; the resampler may cut the last
    assert abs(sum(sizes) - GREETING_MS * 48) <= 960
    gaps = [b.t_ms - a.t_ms for a, b in zip(chunks, chunks[1:], strict=False)]
    # Paced in real time; generous bounds, as a loaded machine delays both ends.
    assert 16.0 < statistics.median(gaps) < 24.0, gaps
    assert 16.0 < (chunks[-1].t_ms - chunks[0].t_ms) / len(gaps) < 30.0, gaps
