"""An ACS-side call simulator: plays the peer that Azure Communication Services would be.

It connects to a media WebSocket as ACS does (a client, with the ``x-ms-call-*`` headers), sends
``AudioMetadata`` and then one ``AudioData`` frame every 20 ms for the whole call, on a monotonic
schedule: caller speech while a turn plays, silent frames (``silent: true``, zero PCM) otherwise.
Meanwhile it records what the bot sends back (``AudioData``/``StopAudio``, PascalCase or camelCase)
on a timeline in milliseconds since the call started, and reports per-turn response latency.

Latency rule: a turn's speech ends at the send time of its last *voiced* 20 ms frame, a frame whose
RMS level is at least ``silence_threshold_dbfs`` (dB relative to full scale; trailing frames below
it are silence, not speech). The bot's answer starts at the arrival time of the first bot chunk
after that moment holding a voiced 20 ms window, looked for until the next turn starts. Latency is
the difference. A turn with no voiced frame ends its "speech" at its first frame.

Example::

    async with ACSCallSimulator("ws://127.0.0.1:8000/api/v1/media/stream") as sim:
        await sim.play([Turn("hello.wav", pause_after_ms=3000), Turn("bye.wav")])
        sim.write_bot_wav("bot.wav")
    print(sim.report().as_dict())
"""

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import soxr
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.testing.wav import frame_bytes, read_wav, split_frames, write_wav

VOICED_DBFS = -45.0
"""Default RMS level (dBFS) at or above which a 20 ms frame counts as voiced."""


def is_voiced(pcm: bytes, threshold_dbfs: float = VOICED_DBFS) -> bool:
    """Whether 16-bit PCM ``pcm`` has an RMS level of at least ``threshold_dbfs``."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return False
    rms = math.sqrt(float(np.mean(samples * samples)))
    return rms > 0 and 20 * math.log10(rms / 32768) >= threshold_dbfs


ACS_SAMPLE_RATES = (16000, 24000)
"""Call rates ACS streams, in Hz."""

FRAME_MS = 20
"""ACS sends one frame every 20 ms."""

DTMF_DIGITS = frozenset("0123456789*#")


@dataclass(frozen=True)
class Turn:
    """One caller turn: speech, then ``pause_after_ms`` of silent frames.

    Parameters:
        audio: A WAV file path (16-bit PCM, any rate, stereo mixed down), or raw PCM16
            little-endian mono bytes at ``sample_rate``; either is resampled to the call rate.
        pause_after_ms: Silence after the audio, in ms, during which the bot is expected to answer.
        sample_rate: Rate of raw PCM ``audio`` in Hz; None means the call rate.
    """

    audio: str | os.PathLike[str] | bytes
    pause_after_ms: int = 2000
    sample_rate: int | None = None


@dataclass(frozen=True)
class BotAudioChunk:
    """One ``AudioData`` message from the bot: arrival time (ms since call start) and its PCM."""

    t_ms: float
    pcm: bytes


@dataclass(frozen=True)
class TurnReport:
    """Timing of one turn, in ms since call start; None where it did not happen."""

    index: int
    speech_end_ms: float | None
    first_bot_audio_ms: float | None
    latency_ms: float | None


@dataclass(frozen=True)
class CallReport:
    """What happened on the call. Times are ms since call start (the ``AudioMetadata`` send).

    Parameters:
        turns: Per-turn timing and latency.
        stop_audio_ms: Arrival times of the bot's ``StopAudio`` messages.
        bot_audio_ms: Total duration of bot audio received, at the call rate.
        frames_sent: ``AudioData`` frames sent (speech and silence).
        max_send_lag_ms: Worst delay of a frame behind its 20 ms schedule; large values mean the
            simulator's own event loop was too busy for its timings to be trusted.
        bad_bot_messages: Bot messages that were not valid ``AudioData``/``StopAudio``.
        closed_by: "caller" (us), "bot" (the server closed first), "dropped" (:meth:`drop`),
            or None while open.
        error: Why the simulator stopped sending early, if it did (e.g. a send timed out).
        close_code: WebSocket close code, None while open.
        close_reason: WebSocket close reason.
    """

    turns: list[TurnReport]
    stop_audio_ms: list[float]
    bot_audio_ms: float
    frames_sent: int
    max_send_lag_ms: float
    bad_bot_messages: int
    closed_by: str | None
    error: str | None
    close_code: int | None
    close_reason: str

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass
class _Outgoing:
    """A caller frame waiting for its 20 ms slot; ``sent`` gets its send time (ms) or None."""

    pcm: bytes
    silent: bool
    sent: asyncio.Future[float | None] | None = None


@dataclass
class _TurnTimes:
    start_ms: float | None
    speech_end_ms: float | None


class ACSCallSimulator:
    """Simulated ACS media stream for one call (an async context manager).

    Between entering and leaving the context the simulator sends a frame every 20 ms, like ACS;
    ``play`` queues caller speech into that stream. Every network wait is bounded: connecting by
    ``open_timeout``, each send by ``send_timeout``, closing by ``close_timeout`` (all seconds).
    """

    def __init__(
        self,
        url: str,
        *,
        call_connection_id: str | None = None,
        correlation_id: str | None = None,
        sample_rate: int = 16000,
        participant_raw_id: str = "4:+15551234567",
        headers: Mapping[str, str] | None = None,
        silence_threshold_dbfs: float = VOICED_DBFS,
        open_timeout: float = 10.0,
        send_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ):
        """Configure the simulated call; nothing connects until ``async with``.

        Args:
            url: The bot's media WebSocket URL (``ws://`` or ``wss://``).
            call_connection_id: Sent as ``x-ms-call-connection-id``; a random UUID if None.
            correlation_id: Sent as ``x-ms-call-correlation-id``; a random UUID if None.
            sample_rate: Call rate in Hz, 16000 or 24000; also the rate bot audio is read at.
            participant_raw_id: The caller's ``participantRawID`` (PSTN form ``4:+1...``).
            headers: Extra upgrade-request headers.
            silence_threshold_dbfs: RMS level (dBFS) at or above which a 20 ms window is voiced.
            open_timeout: Seconds to wait for the WebSocket handshake.
            send_timeout: Seconds to wait for one message to be written.
            close_timeout: Seconds to wait for the closing handshake and task shutdown.

        Raises:
            ValueError: ``sample_rate`` is not a rate ACS streams.
        """
        if sample_rate not in ACS_SAMPLE_RATES:
            raise ValueError(
                f"ACSCallSimulator: sample_rate={sample_rate!r}; ACS streams {ACS_SAMPLE_RATES} Hz"
            )
        self.url = url
        self.call_connection_id = call_connection_id or str(uuid.uuid4())
        self.correlation_id = correlation_id or str(uuid.uuid4())
        self.sample_rate = sample_rate
        self.participant_raw_id = participant_raw_id
        self.frame_bytes = frame_bytes(sample_rate, FRAME_MS)
        """Bytes of PCM16 in one 20 ms frame (640 at 16 kHz, 960 at 24 kHz)."""
        self._headers = dict(headers or {})
        self._threshold_dbfs = silence_threshold_dbfs
        self._open_timeout = open_timeout
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout

        self._ws: ClientConnection | None = None
        self._t0 = 0.0
        self._wall0 = datetime.now(UTC)
        self._queue: deque[_Outgoing] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        self._receive_task: asyncio.Task[None] | None = None
        self._timeline: list[BotAudioChunk | float] = []  # a float is a StopAudio arrival (ms)
        self._turns: list[_TurnTimes] = []
        self._frames_sent = 0
        self._max_lag_ms = 0.0
        self._bad_bot_messages = 0
        self._closed_by: str | None = None
        self._error: str | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> "ACSCallSimulator":
        """Connect, send ``AudioMetadata`` and start the 20 ms frame stream."""
        headers = {
            "x-ms-call-connection-id": self.call_connection_id,
            "x-ms-call-correlation-id": self.correlation_id,
            **self._headers,
        }
        # No compression, proxy or keepalive pings: ACS is a plain client, and a ping timeout
        # under load would be an artefact of the simulator.
        self._ws = await connect(
            self.url,
            additional_headers=headers,
            compression=None,
            proxy=None,
            ping_interval=None,
            open_timeout=self._open_timeout,
            close_timeout=self._close_timeout,
            max_size=2**22,
        )
        self._t0 = time.monotonic()
        self._wall0 = datetime.now(UTC)
        try:
            await self._send(self._metadata_message())
        except BaseException:
            await self._ws.close()
            raise
        self._receive_task = asyncio.create_task(self._receive(), name="acs-sim-receive")
        self._pump_task = asyncio.create_task(self._pump(), name="acs-sim-pump")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop sending, close the WebSocket (code 1000) and end both tasks."""
        await self.hang_up()

    async def hang_up(self) -> None:
        """End the call from the caller's side; safe to call more than once."""
        await self._stop(self._pump_task)
        if self._ws is not None:
            if self._closed_by is None:
                self._closed_by = "caller"
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(self._ws.close(1000, "call ended"), self._close_timeout)
        await self._stop(self._receive_task, grace=self._close_timeout)

    async def drop(self) -> None:
        """Lose the connection without a closing handshake, as a network failure would.

        The server sees the socket end abnormally (1006). ACS would then reconnect the media
        stream of the same call: open a new simulator with the same ``call_connection_id``.
        """
        await self._stop(self._pump_task)
        if self._ws is not None:
            if self._closed_by is None:
                self._closed_by = "dropped"
            self._ws.transport.abort()
        await self._stop(self._receive_task, grace=self._close_timeout)

    async def _stop(self, task: asyncio.Task[None] | None, grace: float = 0.0) -> None:
        if task is None or task.done():
            return
        if grace:
            await asyncio.wait({task}, timeout=grace)
        task.cancel()
        await asyncio.wait({task}, timeout=self._close_timeout)
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.warning(f"ACS simulator task {task.get_name()} failed: {task.exception()!r}")

    # --- caller side ---------------------------------------------------------------------------

    async def play(self, turns: Sequence[Turn]) -> None:
        """Play caller turns in order, each followed by its pause; returns when all were sent.

        All audio is loaded (and checked) before the first frame is queued. Returns early if the
        bot closes the call.

        Raises:
            TimeoutError: The frames were not all sent within their duration plus 5 s.
        """
        loaded = [(self._load(turn), turn.pause_after_ms) for turn in turns]
        for pcm, pause_after_ms in loaded:
            if not await self._play_turn(pcm, pause_after_ms):
                return

    async def silence(self, ms: int) -> None:
        """Wait ``ms`` milliseconds of call time, in 20 ms frames of silence."""
        frames = [_Outgoing(bytes(self.frame_bytes), True) for _ in range(self._frame_count(ms))]
        if frames:
            await self._enqueue_and_wait(frames, last=frames[-1])

    async def send_dtmf(self, digits: str) -> None:
        """Send one ``DtmfData`` message per digit (``0-9``, ``*``, ``#``), right away."""
        if not digits or not set(digits) <= DTMF_DIGITS:
            raise ValueError(f"send_dtmf: {digits!r} is not a string of 0-9, * and #")
        for digit in digits:
            await self._send(json.dumps({"kind": "DtmfData", "dtmfData": {"data": digit}}))

    async def send_raw(self, data: str | bytes) -> None:
        """Send any text or binary message as is, e.g. to test the bot's bad-input handling."""
        await self._send(data)

    async def _play_turn(self, pcm: bytes, pause_after_ms: int) -> bool:
        speech = [_Outgoing(frame, False) for frame in split_frames(pcm, self.sample_rate)]
        pause = [
            _Outgoing(bytes(self.frame_bytes), True)
            for _ in range(self._frame_count(pause_after_ms))
        ]
        frames = speech + pause
        times = _TurnTimes(start_ms=None, speech_end_ms=None)
        self._turns.append(times)
        if not frames:
            return True
        voiced = [i for i, frame in enumerate(speech) if self._voiced(frame.pcm)]
        first, end_of_speech = frames[0], frames[voiced[-1] if voiced else 0]
        loop = asyncio.get_running_loop()
        first.sent, end_of_speech.sent = loop.create_future(), loop.create_future()
        sent = await self._enqueue_and_wait(frames, last=frames[-1])
        times.start_ms, times.speech_end_ms = _sent_ms(first), _sent_ms(end_of_speech)
        return sent

    async def _enqueue_and_wait(self, frames: list[_Outgoing], last: _Outgoing) -> bool:
        """Queue frames for the pump and wait for the last; False if the call ended first."""
        if self._pump_task is None or self._pump_task.done():
            return False
        if last.sent is None:
            last.sent = asyncio.get_running_loop().create_future()
        self._queue.extend(frames)
        budget_s = (len(self._queue) * FRAME_MS) / 1000 + 5.0
        return await asyncio.wait_for(last.sent, budget_s) is not None

    async def _pump(self) -> None:
        """Send one frame per 20 ms slot until cancelled or the bot closes the call."""
        k = 0
        try:
            while True:
                due = self._t0 + k * FRAME_MS / 1000
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                frame = self._queue.popleft() if self._queue else None
                pcm, silent = (frame.pcm, frame.silent) if frame else (None, True)
                sent_ms = self._now_ms()
                self._max_lag_ms = max(self._max_lag_ms, sent_ms - k * FRAME_MS)
                await self._send(self._audio_message(k, pcm, silent))
                self._frames_sent += 1
                if frame and frame.sent and not frame.sent.done():
                    frame.sent.set_result(sent_ms)
                k += 1
        except ConnectionClosed:
            pass
        except TimeoutError:
            self._error = f"a caller frame could not be sent within {self._send_timeout} s"
            logger.warning(f"ACS simulator {self.call_connection_id}: {self._error}")
        finally:
            for frame in self._queue:  # nobody will send these: release whoever waits on them
                if frame.sent and not frame.sent.done():
                    frame.sent.set_result(None)
            self._queue.clear()

    def _metadata_message(self) -> str:
        metadata = {
            "subscriptionId": str(uuid.uuid4()),
            "encoding": "PCM",
            "sampleRate": self.sample_rate,
            "channels": 1,
            "length": self.frame_bytes,
        }
        return json.dumps({"kind": "AudioMetadata", "audioMetadata": metadata})

    def _audio_message(self, k: int, pcm: bytes | None, silent: bool) -> str:
        stamp = self._wall0 + timedelta(milliseconds=k * FRAME_MS)
        audio = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "participantRawID": self.participant_raw_id,
            "data": base64.b64encode(pcm or bytes(self.frame_bytes)).decode("ascii"),
            "silent": silent,
        }
        return json.dumps({"kind": "AudioData", "audioData": audio})

    async def _send(self, message: str | bytes) -> None:
        if self._ws is None:
            raise RuntimeError("ACSCallSimulator is not connected; use `async with`")
        await asyncio.wait_for(self._ws.send(message), self._send_timeout)

    # --- bot side ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self._on_bot_message(message)
        except ConnectionClosed:
            pass
        if self._closed_by is None:
            self._closed_by = "bot"

    def _on_bot_message(self, message: str | bytes) -> None:
        now_ms = self._now_ms()
        try:
            body = json.loads(message)
            kind = body.get("Kind", body.get("kind"))
            if kind == "StopAudio":
                self._timeline.append(now_ms)
                return
            if kind == "AudioData":
                audio = body.get("AudioData") or body.get("audioData")
                data = audio.get("Data", audio.get("data"))
                pcm = base64.b64decode(data, validate=True)
                if len(pcm) % 2 == 0:
                    self._timeline.append(BotAudioChunk(now_ms, pcm))
                    return
        except (ValueError, TypeError, AttributeError, RecursionError):
            pass
        self._bad_bot_messages += 1
        if self._bad_bot_messages == 1:
            logger.warning(
                f"ACS simulator {self.call_connection_id}: bad bot message {message!r:.120}"
            )

    # --- results -------------------------------------------------------------------------------

    @property
    def bot_audio(self) -> list[BotAudioChunk]:
        """Every bot audio chunk in arrival order."""
        return [event for event in self._timeline if isinstance(event, BotAudioChunk)]

    @property
    def stop_audio_ms(self) -> list[float]:
        """Arrival times (ms since call start) of the bot's ``StopAudio`` messages."""
        return [event for event in self._timeline if isinstance(event, float)]

    def report(self) -> CallReport:
        """Summarize the call so far (see the module docstring for the latency rule)."""
        chunks = self.bot_audio
        turns = []
        for index, times in enumerate(self._turns):
            window_end = next(
                (t.start_ms for t in self._turns[index + 1 :] if t.start_ms is not None),
                math.inf,
            )
            first = None
            if times.speech_end_ms is not None:
                first = next(
                    (
                        c.t_ms
                        for c in chunks
                        if times.speech_end_ms <= c.t_ms < window_end and self._has_voice(c.pcm)
                    ),
                    None,
                )
            latency = None
            if first is not None and times.speech_end_ms is not None:
                latency = first - times.speech_end_ms
            turns.append(TurnReport(index, times.speech_end_ms, first, latency))
        ws = self._ws
        return CallReport(
            turns=turns,
            stop_audio_ms=self.stop_audio_ms,
            bot_audio_ms=sum(len(c.pcm) for c in chunks) / 2 / self.sample_rate * 1000,
            frames_sent=self._frames_sent,
            max_send_lag_ms=self._max_lag_ms,
            bad_bot_messages=self._bad_bot_messages,
            closed_by=self._closed_by,
            error=self._error,
            close_code=ws.close_code if ws is not None else None,
            close_reason=(ws.close_reason or "") if ws is not None else "",
        )

    def bot_playout(self) -> bytes:
        """The bot audio as the caller hears it: PCM16 mono at the call rate, from call start.

        Chunks play back to back in arrival order; one arriving after the previous finished
        starts at its arrival time (silence in between). ``StopAudio`` drops whatever had not
        played yet at its arrival, as ACS drops its buffer.
        """
        out = bytearray()
        for event in self._timeline:
            t_ms = event.t_ms if isinstance(event, BotAudioChunk) else event
            at = round(t_ms * self.sample_rate / 1000) * 2  # byte offset of the arrival
            if isinstance(event, BotAudioChunk):
                out.extend(bytes(max(0, at - len(out))))
                out.extend(event.pcm)
            else:
                del out[at:]
        return bytes(out)

    def write_bot_wav(self, path: str | os.PathLike[str]) -> float:
        """Write ``bot_playout()`` as a 16-bit mono WAV (call rate); returns its length in ms."""
        pcm = self.bot_playout()
        write_wav(os.fspath(path), pcm, self.sample_rate)
        return len(pcm) / 2 / self.sample_rate * 1000

    # --- helpers -------------------------------------------------------------------------------

    def _now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000

    def _frame_count(self, ms: int) -> int:
        return max(0, math.ceil(ms / FRAME_MS))

    def _voiced(self, pcm: bytes) -> bool:
        return is_voiced(pcm, self._threshold_dbfs)

    def _has_voice(self, pcm: bytes) -> bool:
        return any(
            self._voiced(pcm[i : i + self.frame_bytes])
            for i in range(0, len(pcm), self.frame_bytes)
        )

    def _load(self, turn: Turn) -> bytes:
        """The turn's audio as PCM16 mono at the call rate."""
        if not isinstance(turn.audio, bytes):
            return read_wav(os.fspath(turn.audio), self.sample_rate)
        if len(turn.audio) % 2:
            raise ValueError(f"Turn audio: raw PCM16 of odd length ({len(turn.audio)} bytes)")
        rate = turn.sample_rate or self.sample_rate
        if rate == self.sample_rate:
            return turn.audio
        samples = np.frombuffer(turn.audio, dtype="<i2")
        return bytes(soxr.resample(samples, rate, self.sample_rate).astype("<i2").tobytes())


def _sent_ms(frame: _Outgoing) -> float | None:
    """When the frame went out (ms since call start), None if it never did."""
    sent = frame.sent
    return sent.result() if sent is not None and sent.done() and not sent.cancelled() else None
