"""ACSCallSimulator against a tiny WebSocket bot served on 127.0.0.1 (real sockets, real time)."""

import asyncio
import base64
import io
import json
import statistics
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicebot.testing.acs_simulator import ACSCallSimulator, Turn

RATE = 16000
FRAME = 640  # bytes of PCM16 in 20 ms at 16 kHz


def _tone(ms: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    mono = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1)


def _wav(samples: np.ndarray, rate: int, sampwidth: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(samples.shape[1] if samples.ndim == 2 else 1)
        wav.setsampwidth(sampwidth)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def _bot_audio(pcm: bytes) -> str:
    return json.dumps(
        {
            "Kind": "AudioData",
            "AudioData": {"Data": base64.b64encode(pcm).decode()},
            "StopAudio": None,
        },
        separators=(",", ":"),
    )


class FakeBot:
    """Plays the bot: after `speech_frames` caller speech frames and then a silent frame, waits
    `reply_delay_ms`, sends `reply_frames` 20 ms tone frames paced in real time, then StopAudio."""

    def __init__(self, speech_frames: int, reply_delay_ms: int, reply_frames: int):
        self.speech_frames = speech_frames
        self.reply_delay_ms = reply_delay_ms
        self.reply_frames = reply_frames
        self.messages: list[Any] = []
        self.audio_arrivals: list[float] = []  # monotonic seconds
        self.headers: dict[str, str] = {}

    async def handler(self, ws: ServerConnection) -> None:
        self.headers = dict(ws.request.headers) if ws.request else {}
        replies: list[asyncio.Task[None]] = []
        speech = 0
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = raw
                self.messages.append(message)
                if not isinstance(message, dict) or message.get("kind") != "AudioData":
                    continue
                self.audio_arrivals.append(time.monotonic())
                if not message["audioData"]["silent"]:
                    speech += 1
                elif speech >= self.speech_frames:
                    speech = 0
                    replies.append(asyncio.create_task(self._reply(ws)))
        finally:
            for task in replies:
                task.cancel()
            await asyncio.gather(*replies, return_exceptions=True)

    async def _reply(self, ws: ServerConnection) -> None:
        await asyncio.sleep(self.reply_delay_ms / 1000)
        frame = _tone(20).tobytes()
        start = time.monotonic()
        for k in range(self.reply_frames):
            await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            await ws.send(_bot_audio(frame))
        await asyncio.sleep(0.02)
        await ws.send('{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}')


@asynccontextmanager
async def bot_server(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/media"


async def test_latency_pacing_stop_audio_and_wav(tmp_path: Path, no_leaked_tasks: None) -> None:
    # Each turn: 200 ms of tone then 100 ms of digital silence inside the audio, then a 600 ms
    # pause. Speech ends with the tone; the bot hears the first `silent: true` frame 120 ms
    # later and answers 200 ms after that: expected latency 320 ms.
    bot = FakeBot(speech_frames=10, reply_delay_ms=200, reply_frames=10)
    speech = np.concatenate([_tone(200)[:, 0], np.zeros(RATE // 10, dtype="<i2")])
    audio = tmp_path / "caller.wav"
    audio.write_bytes(_wav(speech, RATE))

    async with bot_server(bot.handler) as url:
        async with ACSCallSimulator(url, call_connection_id="call-42") as sim:
            await sim.play([Turn(audio, pause_after_ms=600), Turn(audio, pause_after_ms=600)])
            wav_ms = sim.write_bot_wav(tmp_path / "bot.wav")
        report = sim.report()

    assert [t.index for t in report.turns] == [0, 1]
    for turn in report.turns:
        assert turn.latency_ms is not None
        assert turn.latency_ms == pytest.approx(320, abs=40)
    speech_ends = [t.speech_end_ms or 0.0 for t in report.turns]
    assert speech_ends[1] - speech_ends[0] == pytest.approx(900, abs=20)

    arrivals_ms = (np.array(bot.audio_arrivals) - bot.audio_arrivals[0]) * 1000
    assert statistics.median(np.diff(arrivals_ms)) == pytest.approx(20, abs=1)
    behind_schedule_ms = arrivals_ms - 20 * np.arange(len(arrivals_ms))
    assert statistics.median(behind_schedule_ms[-10:]) < 8  # no drift over the call
    assert report.max_send_lag_ms < 50

    assert report.bot_audio_ms == pytest.approx(2 * 10 * 20)
    assert len(report.stop_audio_ms) == 2
    assert report.stop_audio_ms[0] > report.turns[0].first_bot_audio_ms + 200  # after the reply

    # The WAV runs to the end of the second reply: 10 chunks of 20 ms from its first arrival.
    last_start = report.turns[1].first_bot_audio_ms
    assert wav_ms == pytest.approx(last_start + 200, abs=25)
    with wave.open(str(tmp_path / "bot.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        assert wav.getnframes() / RATE * 1000 == pytest.approx(wav_ms)
    assert report.closed_by == "caller"
    assert report.close_code == 1000
    assert report.error is None


async def test_wire_format_headers_dtmf_and_raw(tmp_path: Path, no_leaked_tasks: None) -> None:
    bot = FakeBot(speech_frames=10**6, reply_delay_ms=0, reply_frames=0)
    stereo_8k = tmp_path / "stereo.wav"  # 60 ms: three 24 kHz frames once resampled
    stereo_8k.write_bytes(_wav(_tone(60, rate=8000, channels=2), 8000))
    raw_16k = _tone(60)[:, 0].tobytes()

    async with (
        bot_server(bot.handler) as url,
        ACSCallSimulator(
            url, call_connection_id="call-7", correlation_id="corr-7", sample_rate=24000
        ) as sim,
    ):
        await sim.play(
            [
                Turn(stereo_8k, pause_after_ms=40),
                Turn(raw_16k, pause_after_ms=40, sample_rate=16000),
            ]
        )
        await sim.send_dtmf("5#")
        await sim.send_raw("not json")
        await sim.silence(40)

    assert bot.headers["x-ms-call-connection-id"] == "call-7"
    assert bot.headers["x-ms-call-correlation-id"] == "corr-7"
    first = bot.messages[0]
    assert first["kind"] == "AudioMetadata"
    assert first["audioMetadata"] | {"subscriptionId": "-"} == {
        "subscriptionId": "-",
        "encoding": "PCM",
        "sampleRate": 24000,
        "channels": 1,
        "length": 960,
    }
    audio = [m["audioData"] for m in bot.messages if isinstance(m, dict) and "audioData" in m]
    speech_then_pause = [False, False, False, True, True]
    assert [a["silent"] for a in audio[:10]] == speech_then_pause * 2
    assert all(base64.b64decode(a["data"]).strip(b"\0") for a in audio if not a["silent"])
    assert all(len(base64.b64decode(a["data"])) == 960 for a in audio)
    assert not any(base64.b64decode(a["data"]).strip(b"\0") for a in audio if a["silent"])
    assert {a["participantRawID"] for a in audio} == {"4:+15551234567"}
    stamps = [datetime.fromisoformat(a["timestamp"]) for a in audio[:3]]
    assert audio[0]["timestamp"].endswith("Z")
    assert [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)] == [
        0.02,
        0.02,
    ]
    dtmf = [m["dtmfData"]["data"] for m in bot.messages if isinstance(m, dict) and "dtmfData" in m]
    assert dtmf == ["5", "#"]
    assert "not json" in bot.messages


async def test_stop_audio_drops_unplayed_audio_and_bot_hang_up(
    tmp_path: Path, no_leaked_tasks: None
) -> None:
    async def bot(ws: ServerConnection) -> None:
        chunk = _tone(20).tobytes()
        for _ in range(10):  # 200 ms sent at once, far ahead of playback (camelCase, as JS)
            data = base64.b64encode(chunk).decode()
            await ws.send(json.dumps({"kind": "AudioData", "audioData": {"data": data}}))
        await asyncio.sleep(0.1)
        await ws.send('{"kind":"StopAudio","audioData":null,"stopAudio":{}}')
        await ws.send("nonsense")
        await asyncio.sleep(0.05)
        await ws.close(4000, "bot hung up")

    async with bot_server(bot) as url:
        async with ACSCallSimulator(url) as sim:
            await sim.silence(400)
            wav_ms = sim.write_bot_wav(tmp_path / "bot.wav")
        report = sim.report()

    assert report.bot_audio_ms == pytest.approx(200)
    assert len(report.stop_audio_ms) == 1
    assert wav_ms == pytest.approx(report.stop_audio_ms[0], abs=0.1)  # the rest was dropped
    assert report.bad_bot_messages == 1
    assert (report.closed_by, report.close_code, report.close_reason) == (
        "bot",
        4000,
        "bot hung up",
    )
    assert report.frames_sent < 20  # stopped sending once the bot closed
    assert report.turns == []


async def test_unanswered_turn_has_no_latency(no_leaked_tasks: None) -> None:
    bot = FakeBot(speech_frames=10**6, reply_delay_ms=0, reply_frames=0)

    async with bot_server(bot.handler) as url:
        async with ACSCallSimulator(url) as sim:
            await sim.play([Turn(_tone(40)[:, 0].tobytes(), pause_after_ms=40)])
        report = sim.report()

    (turn,) = report.turns
    assert turn.speech_end_ms is not None
    assert (turn.first_bot_audio_ms, turn.latency_ms) == (None, None)
    assert report.as_dict()["turns"][0]["index"] == 0


def test_bad_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="sample_rate=8000"):
        ACSCallSimulator("ws://127.0.0.1:1/", sample_rate=8000)


async def test_bad_dtmf_digit_is_refused() -> None:
    sim = ACSCallSimulator("ws://127.0.0.1:1/")
    with pytest.raises(ValueError, match="'A'"):
        await sim.send_dtmf("A")


async def test_turn_audio_is_checked_before_the_call_is_touched() -> None:
    sim = ACSCallSimulator("ws://127.0.0.1:1/")  # never connected

    with pytest.raises(ValueError, match="odd length"):
        await sim.play([Turn(b"\x00\x01\x02")])
