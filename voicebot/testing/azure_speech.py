"""A local Azure Speech service that the real Speech SDK talks to: recognition and synthesis.

:class:`AzureSpeechFake` is a WebSocket server on ``127.0.0.1`` speaking the Speech SDK's USP
protocol well enough for ``azure.cognitiveservices.speech`` (1.53) — and pipecat's
``AzureSTTService`` / ``AzureTTSService`` on top of it — to run unchanged against it:

* continuous recognition (``SpeechRecognizer.start_continuous_recognition_async``): per detected
  utterance ``speech.startDetected``, growing ``speech.hypothesis`` messages and a
  ``speech.phrase`` (status ``Success``, with ``NBest`` when Detailed output was asked); at the end
  of the audio ``speech.endDetected``, an ``EndOfDictation`` phrase and ``turn.end``;
* recognize-once (the interactive path): the first utterance, then ``turn.end``; silence only
  gives a ``NoMatch`` phrase (``InitialSilenceTimeout`` after 5 s of audio without speech);
* synthesis (``SpeechSynthesizer``): ``turn.start``, ``response``, binary ``audio`` chunks,
  word and punctuation boundaries when asked for, ``audio.metadata`` ``SessionEnd``,
  ``turn.end``, in any ``raw-<rate>-16bit-mono-pcm`` output format the client asks for (the SDK
  asks for the raw format when a RIFF one is configured and adds the header itself; other
  encodings, such as mu-law, are refused with WebSocket close code 1007).

What is recognized and spoken comes from pluggable backends: :class:`ScriptedRecognizer` (exact
scripted texts) or :class:`CallableRecognizer` (any local STT function), and
:class:`ToneSynthesizer` (a deterministic tone) or :class:`CallableSynthesizer` (any local TTS).

Segmentation rule (server side, per recognition turn): the received PCM16 is cut into 10 ms
frames; a frame is *voiced* when its RMS level is at least ``speech_threshold_dbfs`` (dB relative
to full scale). An utterance starts at the first voiced frame and ends at the end of its last
voiced frame once ``segmentation silence`` ms of unvoiced frames follow it, or when the audio
ends. The segmentation silence is what the client asked for in ``speech.context``
(``segmentationSilenceTimeoutMs``, set by ``PropertyId.Speech_SegmentationSilenceTimeoutMs``) or
else ``segmentation_silence_ms`` (500 ms, Azure's default). Each utterance takes the next index
(counted over the fake's lifetime, across turns and connections), so a scripted recognizer gives
utterance *i* its text *i*. Offsets and durations sent back are 100 ns ticks from the start of
the turn's audio; the final offset covers all audio received, rounded up to a whole millisecond,
or the SDK would open a continuation turn and send the tail again.

Pointing clients at the fake (``fake`` is an entered :class:`AzureSpeechFake`)::

    speech_config = fake.speech_config()          # SpeechConfig(host="ws://127.0.0.1:PORT")
    stt = AzureSTTService(api_key="fake", private_endpoint=fake.stt_endpoint, sample_rate=16000)
    tts = AzureTTSService(api_key="fake", private_endpoint=fake.tts_endpoint, sample_rate=24000)

pipecat builds ``SpeechConfig(subscription=api_key, endpoint=private_endpoint)`` from those
(leave ``region`` out: given both, pipecat warns and ignores it); the SDK uses the endpoint's
path as given (adding ``?language=`` for recognition) and sends the key as
``Ocp-Apim-Subscription-Key``, which the fake records and ignores. The fake tells recognition
from synthesis by the messages it receives, and continuous from recognize-once by
``speech.context``'s ``phraseDetection.mode`` (else the path), so any path works;
:attr:`AzureSpeechFake.stt_endpoint` and :attr:`~AzureSpeechFake.tts_endpoint` are the real
service's paths.

Two ways to run it:

* ``async with AzureSpeechFake(...) as fake:`` serves on the caller's event loop. The SDK's
  blocking calls (``.get()`` on its futures) must then run off that loop
  (``asyncio.to_thread``); its callbacks arrive on SDK threads.
* ``with AzureSpeechFake(...) as fake:`` serves on its own event loop in a thread it owns, for
  clients that block their loop while waiting for the service. pipecat's ``AzureSTTService`` is
  one: when it stops, the SDK recognizer's destructor waits on the loop for the service to end
  the turn (about 11 s against a fake sharing that loop, 70 ms against a threaded one).

Records (:attr:`~AzureSpeechFake.connections`, :attr:`~AzureSpeechFake.recognitions`,
:attr:`~AzureSpeechFake.syntheses`) are appended to as requests arrive; read them once the client
is done. Example::

    async with AzureSpeechFake(recognizer=ScriptedRecognizer(["Hello.", "What is my balance?"]),
                               synthesizer=ToneSynthesizer(), first_byte_delay_ms=150) as fake:
        config = fake.speech_config()
        ...                                       # drive the SDK, from a thread
    assert fake.recognitions[0].texts == ["Hello.", "What is my balance?"]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import math
import re
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    import azure.cognitiveservices.speech as speechsdk

__all__ = [
    "STT_PATH",
    "STT_ONCE_PATH",
    "TTS_PATH",
    "AzureSpeechFake",
    "CallableRecognizer",
    "CallableSynthesizer",
    "ConnectionRecord",
    "FakeMode",
    "RecognitionBackend",
    "RecognitionRecord",
    "ScriptedRecognizer",
    "SynthesisBackend",
    "SynthesisRecord",
    "ToneSynthesizer",
    "Utterance",
    "ticks",
]

STT_PATH = "/speech/recognition/conversation/cognitiveservices/v1"
"""Path of continuous (conversation) recognition, as the SDK builds it from ``host=``."""

STT_ONCE_PATH = "/speech/recognition/interactive/cognitiveservices/v1"
"""Path of recognize-once (interactive) recognition."""

TTS_PATH = "/cognitiveservices/websocket/v1"
"""Path of WebSocket synthesis."""

TICKS_PER_SECOND = 10_000_000
"""USP offsets and durations are in 100 ns ticks."""

ANALYSIS_FRAME_MS = 10
"""Length of the frames whose energy decides speech or silence."""

INITIAL_SILENCE_TIMEOUT_MS = 5000
"""Recognize-once gives up with ``InitialSilenceTimeout`` after this much audio without speech."""

FakeMode = Literal["serve", "mute", "dead", "refuse"]
"""How the fake behaves to clients.

* ``"serve"`` — speak the protocol.
* ``"mute"`` — accept WebSocket connections and record what arrives, but never answer.
* ``"dead"`` — accept TCP connections but never answer, not even the WebSocket handshake.
* ``"refuse"`` — accept TCP connections and close them at once.
"""

_RAW_FORMAT = re.compile(r"^raw-(\d+)(khz|hz)-16bit-mono-pcm$")


def ticks(seconds: float) -> int:
    """``seconds`` as 100 ns ticks (rounded to the nearest tick)."""
    return round(seconds * TICKS_PER_SECOND)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """Speech the fake detected, as handed to a :class:`RecognitionBackend`.

    Parameters:
        index: 0-based number of the utterance over the fake's lifetime.
        pcm: PCM16 little-endian mono audio of the utterance (so far, for a hypothesis; from its
            first to its last voiced frame, for the final result).
        sample_rate: Rate of ``pcm`` in Hz, as the client declared it.
        hypotheses_sent: How many hypotheses were already sent for this utterance.
    """

    index: int
    pcm: bytes
    sample_rate: int
    hypotheses_sent: int = 0

    @property
    def duration_ms(self) -> float:
        """Length of ``pcm`` in milliseconds."""
        return len(self.pcm) / 2 / self.sample_rate * 1000


class RecognitionBackend(Protocol):
    """What the fake recognizes in detected speech."""

    async def hypothesis(self, utterance: Utterance) -> str:
        """Partial text of an utterance still being spoken; ``""`` sends no hypothesis."""
        ...

    async def final(self, utterance: Utterance) -> str:
        """Final text of a finished utterance; ``""`` gives a ``NoMatch`` result."""
        ...


class SynthesisBackend(Protocol):
    """What the fake speaks for a text."""

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        """PCM16 little-endian mono audio of ``text`` at ``sample_rate`` Hz."""
        ...


class ScriptedRecognizer:
    """Utterance *i* is recognized as ``texts[i]``; utterances beyond the script as ``NoMatch``.

    Hypothesis *k* (1-based) of an utterance is the first *k* words of its text (all of them
    once *k* reaches the word count), so hypotheses grow as a real recognizer's do.

    Args:
        texts: The final text of each utterance, in order.
        delay_ms: How long producing a final result takes, in ms (on top of the fake's
            ``final_delay_ms``).
    """

    def __init__(self, texts: list[str], delay_ms: float = 0) -> None:
        if delay_ms < 0:
            raise ValueError(f"ScriptedRecognizer: delay_ms={delay_ms!r}; must be >= 0")
        self.texts = list(texts)
        self.delay_ms = delay_ms

    def text(self, index: int) -> str:
        """The scripted text of utterance ``index`` (``""`` past the script)."""
        return self.texts[index] if index < len(self.texts) else ""

    async def hypothesis(self, utterance: Utterance) -> str:
        """The first ``hypotheses_sent + 1`` words of the utterance's text."""
        words = self.text(utterance.index).split()
        return " ".join(words[: utterance.hypotheses_sent + 1])

    async def final(self, utterance: Utterance) -> str:
        """The utterance's scripted text, after ``delay_ms``."""
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        return self.text(utterance.index)


class CallableRecognizer:
    """Recognition by a local STT function ``transcribe(pcm16: bytes, sample_rate: int) -> str``.

    A plain function runs in a worker thread (``asyncio.to_thread``), so a slow model does not
    stall the fake's event loop; a coroutine function is awaited as is. It sees each finished
    utterance once; no hypotheses are sent.
    """

    def __init__(self, transcribe: Callable[[bytes, int], str | Awaitable[str]]) -> None:
        self.transcribe = transcribe

    async def hypothesis(self, utterance: Utterance) -> str:
        """No partial results: always ``""``."""
        return ""

    async def final(self, utterance: Utterance) -> str:
        """``transcribe(utterance.pcm, utterance.sample_rate)``, off the event loop."""
        return await _call_off_loop(self.transcribe, utterance.pcm, utterance.sample_rate)


class ToneSynthesizer:
    """Speaks any text as a sine tone of ``ms_per_char`` ms per character of text.

    The length is declared, so tests can assert exact byte counts: :meth:`duration_ms` and
    :meth:`expected_bytes`.

    Args:
        ms_per_char: Milliseconds of audio per character of the text.
        hz: Tone frequency in Hz.
        amplitude: Peak level, 0..1 of full scale.
    """

    def __init__(self, ms_per_char: float = 50, hz: float = 440, amplitude: float = 0.3) -> None:
        problems = []
        if ms_per_char <= 0:
            problems.append(f"ms_per_char={ms_per_char!r} must be > 0")
        if hz <= 0:
            problems.append(f"hz={hz!r} must be > 0")
        if not 0 <= amplitude <= 1:
            problems.append(f"amplitude={amplitude!r} must be within 0..1")
        if problems:
            raise ValueError("ToneSynthesizer: " + "; ".join(problems))
        self.ms_per_char = ms_per_char
        self.hz = hz
        self.amplitude = amplitude

    def duration_ms(self, text: str) -> float:
        """Declared audio length of ``text`` in ms."""
        return len(text) * self.ms_per_char

    def samples(self, text: str, sample_rate: int) -> int:
        """Samples of audio for ``text`` at ``sample_rate`` Hz (the duration, rounded)."""
        return round(self.duration_ms(text) * sample_rate / 1000)

    def expected_bytes(self, text: str, sample_rate: int) -> int:
        """Bytes of PCM16 mono audio for ``text`` at ``sample_rate`` Hz."""
        return 2 * self.samples(text, sample_rate)

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        """The tone, :meth:`expected_bytes` long."""
        t = np.arange(self.samples(text, sample_rate)) / sample_rate
        wave = self.amplitude * 32767 * np.sin(2 * np.pi * self.hz * t)
        return wave.astype("<i2").tobytes()


class CallableSynthesizer:
    """Synthesis by a local TTS function ``speak(text: str, sample_rate: int) -> bytes``.

    The function returns PCM16 little-endian mono audio at ``sample_rate`` Hz. A plain function
    runs in a worker thread (``asyncio.to_thread``); a coroutine function is awaited as is.
    """

    def __init__(self, speak: Callable[[str, int], bytes | Awaitable[bytes]]) -> None:
        self.speak = speak

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        """``speak(text, sample_rate)``, off the event loop."""
        return await _call_off_loop(self.speak, text, sample_rate)


async def _call_off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class ConnectionRecord:
    """One client connection.

    Parameters:
        path: The WebSocket request path with its query (None in the ``dead``/``refuse`` modes,
            where no request is read).
        headers: Upgrade-request headers (``X-ConnectionId``, ``Ocp-Apim-Subscription-Key``…).
        speech_config: The ``speech.config`` JSON the client sent, if any.
        messages: ``Path`` of every message received, in order (``audio`` included).
        opened_at: ``time.monotonic()`` when the connection was accepted.
        closed: Whether the connection has ended.
    """

    path: str | None
    headers: dict[str, str] = field(default_factory=dict)
    opened_at: float = field(default_factory=time.monotonic)
    speech_config: dict[str, Any] | None = None
    messages: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def connection_id(self) -> str | None:
        """The SDK's ``X-ConnectionId`` header (32 hex digits)."""
        return self.headers.get("x-connectionid")


@dataclass
class RecognitionRecord:
    """One recognition turn (one ``X-RequestId``) as the fake saw and answered it.

    Parameters:
        request_id: The turn id.
        mode: ``"conversation"`` (continuous), ``"interactive"`` (recognize once) or
            ``"dictation"``.
        context: The ``speech.context`` JSON (empty if the client sent none).
        sample_rate: Audio rate in Hz from the RIFF header (else ``speech.config``).
        segmentation_silence_ms: Silence that ended an utterance in this turn.
        audio_bytes: PCM bytes received, RIFF header excluded.
        audio_ended: Whether the client sent the empty audio message that ends the stream.
        texts: Final texts sent (``""`` for a ``NoMatch``), in order.
        hypotheses: Hypothesis texts sent, in order.
        phrases: Every ``speech.phrase`` body sent, in order.
        first_audio_at: ``time.monotonic()`` when the turn's first audio arrived.
        first_hypothesis_at: When its first hypothesis was sent.
        first_phrase_at: When its first ``Success`` phrase was sent.
        turn_end_at: When its ``turn.end`` was sent.
    """

    request_id: str
    mode: str
    context: dict[str, Any]
    sample_rate: int
    segmentation_silence_ms: float
    audio_bytes: int = 0
    audio_ended: bool = False
    texts: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    phrases: list[dict[str, Any]] = field(default_factory=list)
    first_audio_at: float | None = None
    first_hypothesis_at: float | None = None
    first_phrase_at: float | None = None
    turn_end_at: float | None = None


@dataclass
class SynthesisRecord:
    """One synthesis turn (one ``X-RequestId``).

    Parameters:
        request_id: The turn id.
        context: The ``synthesis.context`` JSON.
        output_format: The output format asked for, e.g. ``raw-24khz-16bit-mono-pcm``.
        sample_rate: Its rate in Hz (0 if the format is not one the fake speaks).
        ssml: The SSML document received.
        text: The text spoken: the SSML's text content with whitespace collapsed.
        audio_bytes: PCM bytes sent.
        received_at: ``time.monotonic()`` when the SSML arrived.
        first_audio_at: When the first audio chunk was sent.
        turn_end_at: When ``turn.end`` was sent.
    """

    request_id: str
    context: dict[str, Any]
    output_format: str
    sample_rate: int
    ssml: str
    text: str
    audio_bytes: int = 0
    received_at: float = 0.0
    first_audio_at: float | None = None
    turn_end_at: float | None = None


# --------------------------------------------------------------------------------------------
# USP framing
# --------------------------------------------------------------------------------------------


@dataclass
class _Message:
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def path(self) -> str:
        return self.headers.get("path", "").lower()

    @property
    def request_id(self) -> str:
        return self.headers.get("x-requestid", "").lower()

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        value = json.loads(self.body.decode("utf-8"))
        return value if isinstance(value, dict) else {}


def _parse_headers(text: str) -> dict[str, str]:
    headers = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _parse(raw: str | bytes) -> _Message:
    """A USP message: text (headers, blank line, body) or binary (2-byte header length first)."""
    if isinstance(raw, str):
        head, _, body = raw.partition("\r\n\r\n")
        return _Message(_parse_headers(head), body.encode("utf-8"))
    if len(raw) < 2:
        raise ValueError(f"binary USP message of {len(raw)} bytes has no header length")
    size = struct.unpack(">H", raw[:2])[0]
    if len(raw) < 2 + size:
        raise ValueError(f"binary USP message header of {size} bytes runs past its end")
    return _Message(_parse_headers(raw[2 : 2 + size].decode("ascii")), raw[2 + size :])


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_message(path: str, request_id: str, body: dict[str, Any]) -> str:
    head = (
        f"X-RequestId:{request_id}\r\n"
        f"Content-Type:application/json; charset=utf-8\r\n"
        f"X-Timestamp:{_timestamp()}\r\n"
        f"Path:{path}\r\n"
    )
    return head + "\r\n" + json.dumps(body, separators=(",", ":"))


def _audio_message(request_id: str, stream_id: str, payload: bytes) -> bytes:
    head = (
        f"X-RequestId:{request_id}\r\nX-StreamId:{stream_id}\r\n"
        f"X-Timestamp:{_timestamp()}\r\nPath:audio\r\n"
    ).encode("ascii")
    return struct.pack(">H", len(head)) + head + payload


def _riff_rate(header: bytes) -> int | None:
    """Sample rate from a RIFF/WAVE header, or None if ``header`` is not one."""
    if len(header) >= 28 and header[:4] == b"RIFF" and header[8:12] == b"WAVE":
        return int(struct.unpack("<I", header[24:28])[0])
    return None


def _output_rate(output_format: str) -> int | None:
    """Rate in Hz of a ``raw-…-16bit-mono-pcm`` format, None for any other format."""
    match = _RAW_FORMAT.match(output_format.lower())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return number * 1000 if unit == "khz" else number


def _ssml_text(ssml: str) -> str:
    """The text an SSML document speaks, whitespace collapsed; the raw string if not XML."""
    try:
        root = ElementTree.fromstring(ssml)
    except ElementTree.ParseError:
        return " ".join(ssml.split())
    return " ".join("".join(root.itertext()).split())


def _lexical(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


def _dbfs(frame: np.ndarray) -> float:
    if frame.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(frame.astype(np.float64)))))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


# --------------------------------------------------------------------------------------------
# Recognition turn
# --------------------------------------------------------------------------------------------


@dataclass
class _Event:
    kind: Literal["start", "hypothesis", "final", "end", "initial_silence"]
    offset: int = 0  # ticks from the start of the turn's audio
    duration: int = 0  # ticks
    utterance: Utterance | None = None
    at: float = 0.0  # loop time the audio completing the event arrived


class _RecognitionTurn:
    """One recognition turn: segments its audio as it arrives; one task answers, in order."""

    def __init__(self, fake: AzureSpeechFake, session: _Session, record: RecognitionRecord):
        self.fake = fake
        self.session = session
        self.record = record
        self.rate = record.sample_rate
        self.frame_samples = max(1, self.rate * ANALYSIS_FRAME_MS // 1000)
        self.silence_limit = record.segmentation_silence_ms * self.rate / 1000
        self.hypothesis_every = max(1, round(fake.hypothesis_interval_ms * self.rate / 1000))
        self.pcm = bytearray()
        self.analysed = 0  # samples
        self.in_speech = False
        self.index = 0  # of the current utterance
        self.start = 0  # samples
        self.last_voiced_end = 0
        self.silence = 0
        self.next_hypothesis = 0
        self.hypotheses = 0
        self.done = False  # no more events: the result is given (interactive) or audio ended
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    @property
    def continuous(self) -> bool:
        return self.record.mode != "interactive"

    @property
    def detailed(self) -> bool:
        output = self.record.context.get("phraseOutput")
        return isinstance(output, dict) and str(output.get("format", "")).lower() == "detailed"

    def _ticks(self, samples: int) -> int:
        return samples * TICKS_PER_SECOND // self.rate

    def _total_ticks(self) -> int:
        """All audio received, rounded up to a whole millisecond."""
        return math.ceil(len(self.pcm) // 2 * 1000 / self.rate) * 10_000

    def _emit(self, event: _Event) -> None:
        event.at = asyncio.get_running_loop().time()
        self.events.put_nowait(event)

    def feed(self, payload: bytes) -> None:
        """Take a chunk of PCM; queue the events it completes (turn.start goes out first)."""
        if self.record.first_audio_at is None:
            self.record.first_audio_at = time.monotonic()
        self.record.audio_bytes += len(payload)
        if self.task is None:
            self.task = self.session.spawn(self._respond(), f"reco-{self.record.request_id}")
        if self.done:
            return
        self.pcm += payload
        base = self.analysed  # only the audio not analysed yet is looked at
        tail = np.frombuffer(bytes(self.pcm[2 * base : len(self.pcm) // 2 * 2]), dtype="<i2")
        threshold = self.fake.speech_threshold_dbfs
        while self.analysed + self.frame_samples <= base + tail.size and not self.done:
            begin = self.analysed
            end = self.analysed = begin + self.frame_samples
            voiced = _dbfs(tail[begin - base : end - base]) >= threshold
            if not self.in_speech:
                if voiced:
                    self._start_utterance(begin, end)
                elif not self.continuous and end * 1000 >= INITIAL_SILENCE_TIMEOUT_MS * self.rate:
                    self._emit(_Event("initial_silence", duration=self._ticks(end)))
                    self.done = True
                continue
            if voiced:
                self.last_voiced_end, self.silence = end, 0
            else:
                self.silence += end - begin
            if self.silence >= self.silence_limit:
                self._end_utterance()
            elif end >= self.next_hypothesis:
                self._emit(self._snapshot("hypothesis", end))
                self.hypotheses += 1
                self.next_hypothesis += self.hypothesis_every

    def end_of_audio(self) -> None:
        """The client ended the stream: finish an open utterance, then the turn."""
        self.record.audio_ended = True
        if self.task is None:
            self.task = self.session.spawn(self._respond(), f"reco-{self.record.request_id}")
        if self.done:
            return
        if self.in_speech:
            self._end_utterance()
        if not self.done:
            self._emit(_Event("end", offset=self._total_ticks()))
            self.done = True

    def _start_utterance(self, begin: int, end: int) -> None:
        self.in_speech = True
        self.index = self.fake._next_utterance_index()
        self.start, self.last_voiced_end, self.silence = begin, end, 0
        self.next_hypothesis = begin + self.hypothesis_every
        self.hypotheses = 0
        self._emit(_Event("start", offset=self._ticks(begin)))

    def _end_utterance(self) -> None:
        self.in_speech = False
        self._emit(self._snapshot("final", self.last_voiced_end))
        if not self.continuous:
            self.done = True

    def _snapshot(self, kind: Literal["hypothesis", "final"], end: int) -> _Event:
        pcm = bytes(self.pcm[2 * self.start : 2 * end])
        return _Event(
            kind,
            offset=self._ticks(self.start),
            duration=self._ticks(end - self.start),
            utterance=Utterance(self.index, pcm, self.rate, self.hypotheses),
        )

    async def _respond(self) -> None:
        await self._send("turn.start", {"context": {"serviceTag": uuid.uuid4().hex}})
        while True:
            async with asyncio.timeout(self.fake.idle_timeout):
                event = await self.events.get()
            if event.kind == "start":
                await self._send("speech.startDetected", {"Offset": event.offset})
            elif event.kind == "hypothesis":
                await self._hypothesis(event)
            elif event.kind == "final":
                await self._final(event)
                if not self.continuous:
                    return
            elif event.kind == "end":
                await self._end(event.offset)
                return
            else:
                await self._no_speech(event.duration, "InitialSilenceTimeout")
                return

    async def _send(self, path: str, body: dict[str, Any]) -> None:
        await self.session.send(_text_message(path, self.record.request_id, body))

    async def _hypothesis(self, event: _Event) -> None:
        assert event.utterance is not None
        async with asyncio.timeout(self.fake.backend_timeout):
            text = await self.fake.recognizer.hypothesis(event.utterance)
        if not text:
            return
        self.record.hypotheses.append(text)
        if self.record.first_hypothesis_at is None:
            self.record.first_hypothesis_at = time.monotonic()
        body = {"Text": text, "Offset": event.offset, "Duration": event.duration}
        await self._send("speech.hypothesis", body)

    async def _final(self, event: _Event) -> None:
        assert event.utterance is not None
        wait = event.at + self.fake.final_delay_ms / 1000 - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        async with asyncio.timeout(self.fake.backend_timeout):
            text = await self.fake.recognizer.final(event.utterance)
        if not self.continuous:
            await self._send("speech.endDetected", {"Offset": event.offset + event.duration})
        body: dict[str, Any] = {
            "RecognitionStatus": "Success" if text else "NoMatch",
            "Offset": event.offset,
            "Duration": event.duration,
        }
        if text:
            body["DisplayText"] = text
            if self.detailed:
                lexical = _lexical(text)
                body["NBest"] = [
                    {
                        "Confidence": 0.95,
                        "Lexical": lexical,
                        "ITN": lexical,
                        "MaskedITN": lexical,
                        "Display": text,
                    }
                ]
            if self.record.first_phrase_at is None:
                self.record.first_phrase_at = time.monotonic()
        self.record.texts.append(text)
        self.record.phrases.append(body)
        await self._send("speech.phrase", body)
        if not self.continuous:
            await self._turn_end()

    async def _end(self, total: int) -> None:
        if not self.continuous:
            await self._no_speech(total, "NoMatch")
            return
        await self._send("speech.endDetected", {"Offset": total})
        body = {"RecognitionStatus": "EndOfDictation", "Offset": total, "Duration": 0}
        self.record.phrases.append(body)
        await self._send("speech.phrase", body)
        await self._turn_end()

    async def _no_speech(self, duration: int, status: str) -> None:
        await self._send("speech.endDetected", {"Offset": duration})
        body = {"RecognitionStatus": status, "Offset": 0, "Duration": duration}
        self.record.texts.append("")
        self.record.phrases.append(body)
        await self._send("speech.phrase", body)
        await self._turn_end()

    async def _turn_end(self) -> None:
        await self._send("turn.end", {})
        self.record.turn_end_at = time.monotonic()


# --------------------------------------------------------------------------------------------
# One connection
# --------------------------------------------------------------------------------------------


def _mode_of(context: dict[str, Any], path: str) -> str:
    detection = context.get("phraseDetection")
    mode = detection.get("mode") if isinstance(detection, dict) else None
    if isinstance(mode, str) and mode:
        return mode.lower()
    if "/interactive/" in path:
        return "interactive"
    if "/dictation/" in path:
        return "dictation"
    return "conversation"


def _segmentation_ms(context: dict[str, Any], default: float) -> float:
    detection = context.get("phraseDetection")
    if not isinstance(detection, dict):
        return default
    for value in detection.values():
        segmentation = value.get("segmentation") if isinstance(value, dict) else None
        if isinstance(segmentation, dict):
            timeout = segmentation.get("segmentationSilenceTimeoutMs")
            if isinstance(timeout, int | float) and timeout > 0:
                return float(timeout)
    return default


class _Session:
    """One WebSocket connection: parses what the client sends, owns the tasks that answer."""

    def __init__(self, fake: AzureSpeechFake, ws: ServerConnection, record: ConnectionRecord):
        self.fake = fake
        self.ws = ws
        self.record = record
        self.tasks: set[asyncio.Task[None]] = set()
        self.contexts: dict[str, dict[str, Any]] = {}  # speech.context by request id
        self.synthesis_contexts: dict[str, dict[str, Any]] = {}
        self.turns: dict[str, _RecognitionTurn] = {}
        self.ending = False

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"azure-speech-fake-{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or isinstance(task.exception(), ConnectionClosed):
            return
        error = task.exception()
        if error is not None:
            self.fail(f"{task.get_name()} failed: {error!r}", 1011)

    def fail(self, message: str, code: int) -> None:
        """Record a failure of the fake and close the connection with ``code``, as Azure does."""
        logger.warning(f"Azure Speech fake: {message}")
        self.fake.errors.append(message)
        if not self.ending:
            self.spawn(self.close(code, message[:120]), "close")

    async def send(self, message: str | bytes) -> None:
        async with asyncio.timeout(self.fake.send_timeout):
            await self.ws.send(message)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.fake.close_timeout):
                await self.ws.close(code, reason)

    async def run(self, answer: bool) -> None:
        """Read messages until the client leaves, the connection idles out, or the fake stops."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.fake.idle_timeout):
                        raw = await self.ws.recv()
                except TimeoutError:
                    await self.close(1000, "idle timeout")
                    return
                try:
                    message = _parse(raw)
                    self.record.messages.append(message.path)
                    if answer:
                        self._handle(message)
                    elif message.path == "speech.config":
                        self.record.speech_config = message.json()
                except (ValueError, UnicodeDecodeError) as error:
                    self.fail(f"bad message from the client: {error}", 1007)
        except ConnectionClosed:
            pass
        finally:
            self.ending = self.record.closed = True
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=self.fake.close_timeout)

    def _handle(self, message: _Message) -> None:
        path, rid = message.path, message.request_id
        if path == "speech.config":
            self.record.speech_config = message.json()
        elif path == "speech.context":
            self.contexts[rid] = message.json()
        elif path == "audio":
            self._audio(rid, message)
        elif path == "synthesis.context":
            self.synthesis_contexts[rid] = message.json()
        elif path == "ssml":
            received = asyncio.get_running_loop().time()
            ssml = message.body.decode("utf-8")
            self.spawn(self._synthesize(rid, ssml, received), f"tts-{rid}")
        # telemetry and anything else: recorded in ConnectionRecord.messages only

    def _audio(self, rid: str, message: _Message) -> None:
        payload = message.body
        turn = self.turns.get(rid)
        if turn is None:
            rate = _riff_rate(payload)
            if rate is not None:
                data = payload.find(b"data")
                payload = payload[data + 8 :] if data >= 0 else b""
            turn = self._new_turn(rid, rate)
        if not message.body:
            turn.end_of_audio()
        elif payload:
            turn.feed(payload)

    def _new_turn(self, rid: str, riff_rate: int | None) -> _RecognitionTurn:
        context = self.contexts.pop(rid, {})
        source = (self.record.speech_config or {}).get("context", {}).get("audio", {})
        declared = source.get("source", {}).get("samplerate") if isinstance(source, dict) else None
        rate = riff_rate or int(declared or 16000)
        record = RecognitionRecord(
            request_id=rid,
            mode=_mode_of(context, self.record.path or ""),
            context=context,
            sample_rate=rate,
            segmentation_silence_ms=_segmentation_ms(context, self.fake.segmentation_silence_ms),
        )
        self.fake.recognitions.append(record)
        turn = self.turns[rid] = _RecognitionTurn(self.fake, self, record)
        return turn

    async def _synthesize(self, rid: str, ssml: str, received: float) -> None:
        context = self.synthesis_contexts.pop(rid, {})
        synthesis = context.get("synthesis", {})
        audio_options = synthesis.get("audio", {}) if isinstance(synthesis, dict) else {}
        output_format = str(audio_options.get("outputFormat", "raw-16khz-16bit-mono-pcm"))
        rate = _output_rate(output_format)
        text = _ssml_text(ssml)
        record = SynthesisRecord(
            request_id=rid,
            context=context,
            output_format=output_format,
            sample_rate=rate or 0,
            ssml=ssml,
            text=text,
            received_at=time.monotonic(),
        )
        self.fake.syntheses.append(record)
        if rate is None:
            reason = f"unsupported outputFormat {output_format!r}: the fake speaks raw 16-bit PCM"
            self.fake.errors.append(reason)
            await self.close(1007, reason)
            return

        def send_json(path: str, body: dict[str, Any]) -> Awaitable[None]:
            return self.send(_text_message(path, rid, body))

        tag, stream_id = uuid.uuid4().hex, uuid.uuid4().hex
        await send_json("turn.start", {"context": {"serviceTag": tag}})
        audio = {"type": "inline", "streamId": stream_id}
        await send_json("response", {"context": {"serviceTag": tag}, "audio": audio})
        async with asyncio.timeout(self.fake.backend_timeout):
            pcm = await self.fake.synthesizer.synthesize(text, rate)
        pcm = pcm[: len(pcm) // 2 * 2]
        wait = received + self.fake.first_byte_delay_ms / 1000 - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

        total = len(pcm) // 2 * TICKS_PER_SECOND // rate
        options = audio_options.get("metadataOptions", {})
        words = _boundaries(text, total, options if isinstance(options, dict) else {})
        chunk = max(2, round(rate * self.fake.audio_chunk_ms / 1000) * 2)
        for start in range(0, len(pcm), chunk):
            piece = pcm[start : start + chunk]
            end = (start + len(piece)) // 2 * TICKS_PER_SECOND // rate
            while words and words[0]["Data"]["Offset"] < end:
                await send_json("audio.metadata", {"Metadata": [words.pop(0)]})
            if record.first_audio_at is None:
                record.first_audio_at = time.monotonic()
            await self.send(_audio_message(rid, stream_id, piece))
            record.audio_bytes += len(piece)
        for word in words:
            await send_json("audio.metadata", {"Metadata": [word]})
        session_end = {"Type": "SessionEnd", "Data": {"Offset": total}}
        await send_json("audio.metadata", {"Metadata": [session_end]})
        await send_json("turn.end", {})
        record.turn_end_at = time.monotonic()


def _boundaries(text: str, total_ticks: int, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Word and punctuation boundaries the client asked for, in text order.

    Each is timed in proportion to its place in the text: a token starting at character *i*
    of *n* is at ``i / n`` of the audio. Both kinds are ``WordBoundary`` metadata; punctuation
    has ``BoundaryType`` ``PunctuationBoundary``, as the service sends it.
    """
    kinds = set()
    if options.get("wordBoundaryEnabled"):
        kinds.add("WordBoundary")
    if options.get("punctuationBoundaryEnabled"):
        kinds.add("PunctuationBoundary")
    if not text or not kinds:
        return []
    per_char = total_ticks / len(text)
    boundaries = []
    for match in re.finditer(r"\w+(?:['’-]\w+)*|[^\w\s]", text):
        token = match.group()
        kind = "WordBoundary" if token[0].isalnum() or token[0] == "_" else "PunctuationBoundary"
        if kind not in kinds:
            continue
        boundaries.append(
            {
                "Type": "WordBoundary",
                "Data": {
                    "Offset": round(match.start() * per_char),
                    "Duration": round(len(token) * per_char),
                    "text": {"Text": token, "Length": len(token), "BoundaryType": kind},
                },
            }
        )
    return boundaries


def _read_upgrade_request(request: bytes, record: ConnectionRecord) -> None:
    """Fill ``record``'s path and headers from an HTTP request once its head is complete."""
    head, sep, _ = request.partition(b"\r\n\r\n")
    if not sep:
        return
    request_line, _, headers = head.decode("latin-1").partition("\r\n")
    parts = request_line.split(" ")
    record.path = parts[1] if len(parts) == 3 else request_line
    record.headers = _parse_headers(headers)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class AzureSpeechFake:
    """A local Azure Speech service for the real Speech SDK (an async context manager).

    Entering starts a server on ``127.0.0.1`` on a free port; leaving closes every connection and
    ends every task it started. Every wait is bounded: each message send by ``send_timeout``, each
    backend call by ``backend_timeout``, a connection's silence by ``idle_timeout`` (then it is
    closed), and shutdown by ``close_timeout`` (all seconds).

    What clients sent and what the fake answered is recorded in :attr:`connections`,
    :attr:`recognitions` and :attr:`syntheses`; failures of the fake itself (a backend raising,
    an unsupported output format) in :attr:`errors`. The delays (``final_delay_ms``,
    ``first_byte_delay_ms``) may be changed between requests.
    """

    def __init__(
        self,
        *,
        recognizer: RecognitionBackend | None = None,
        synthesizer: SynthesisBackend | None = None,
        mode: FakeMode = "serve",
        final_delay_ms: float = 0,
        first_byte_delay_ms: float = 0,
        segmentation_silence_ms: float = 500,
        speech_threshold_dbfs: float = -40,
        hypothesis_interval_ms: float = 300,
        audio_chunk_ms: float = 100,
        send_timeout: float = 5.0,
        backend_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        close_timeout: float = 5.0,
    ) -> None:
        """Configure the fake; nothing listens until ``async with``.

        Args:
            recognizer: What detected utterances are recognized as; default: every utterance is
                a ``NoMatch`` (``ScriptedRecognizer([])``).
            synthesizer: What text is spoken as; default :class:`ToneSynthesizer()`.
            mode: ``"serve"``, or a broken endpoint: ``"mute"``, ``"dead"``, ``"refuse"``
                (see :data:`FakeMode`).
            final_delay_ms: Delay from the audio that ends an utterance arriving to its
                ``speech.phrase`` being sent, in ms (a recognizer's own time comes on top).
            first_byte_delay_ms: Earliest time of the first audio chunk of a synthesis after its
                SSML arrived, in ms.
            segmentation_silence_ms: Silence that ends an utterance, in ms, unless the client
                asks for another in ``speech.context``.
            speech_threshold_dbfs: RMS level (dBFS) at or above which a 10 ms frame is speech.
            hypothesis_interval_ms: One hypothesis per this much utterance audio, in ms.
            audio_chunk_ms: Length of each synthesized audio message, in ms.
            send_timeout: Seconds allowed for one message to be written.
            backend_timeout: Seconds allowed for one backend call.
            idle_timeout: Seconds a connection may stay silent before the fake closes it.
            close_timeout: Seconds allowed for closing connections and ending tasks.

        Raises:
            ValueError: Listing every bad argument.
        """
        problems = []
        if mode not in ("serve", "mute", "dead", "refuse"):
            problems.append(f"mode={mode!r} is not one of 'serve', 'mute', 'dead', 'refuse'")
        for name, value in (
            ("final_delay_ms", final_delay_ms),
            ("first_byte_delay_ms", first_byte_delay_ms),
        ):
            if value < 0:
                problems.append(f"{name}={value!r} must be >= 0")
        for name, value in (
            ("segmentation_silence_ms", segmentation_silence_ms),
            ("hypothesis_interval_ms", hypothesis_interval_ms),
            ("audio_chunk_ms", audio_chunk_ms),
            ("send_timeout", send_timeout),
            ("backend_timeout", backend_timeout),
            ("idle_timeout", idle_timeout),
            ("close_timeout", close_timeout),
        ):
            if value <= 0:
                problems.append(f"{name}={value!r} must be > 0")
        if problems:
            raise ValueError("AzureSpeechFake: " + "; ".join(problems))
        self.recognizer: RecognitionBackend = recognizer or ScriptedRecognizer([])
        self.synthesizer: SynthesisBackend = synthesizer or ToneSynthesizer()
        self.mode: FakeMode = mode
        self.final_delay_ms = final_delay_ms
        self.first_byte_delay_ms = first_byte_delay_ms
        self.segmentation_silence_ms = segmentation_silence_ms
        self.speech_threshold_dbfs = speech_threshold_dbfs
        self.hypothesis_interval_ms = hypothesis_interval_ms
        self.audio_chunk_ms = audio_chunk_ms
        self.send_timeout = send_timeout
        self.backend_timeout = backend_timeout
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout

        self.connections: list[ConnectionRecord] = []
        """Every client connection, in order."""
        self.recognitions: list[RecognitionRecord] = []
        """Every recognition turn, in the order their audio started."""
        self.syntheses: list[SynthesisRecord] = []
        """Every synthesis request, in order."""
        self.errors: list[str] = []
        """What went wrong inside the fake (it closed the connection with 1011 or 1007)."""

        self._port: int | None = None
        self._ws_server: Server | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp_tasks: set[asyncio.Task[Any]] = set()
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._utterances = 0

    # --- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the fake listens on (only while entered)."""
        if self._port is None:
            raise RuntimeError("AzureSpeechFake is not running; use `async with`")
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT``: the ``host=`` for ``SpeechConfig``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def stt_endpoint(self) -> str:
        """Continuous recognition URL: pipecat ``AzureSTTService(private_endpoint=...)``."""
        return self.url + STT_PATH

    @property
    def tts_endpoint(self) -> str:
        """Synthesis URL: pipecat ``AzureTTSService(private_endpoint=...)``."""
        return self.url + TTS_PATH

    def speech_config(self, *, give_up_after_ms: int | None = None) -> speechsdk.SpeechConfig:
        """A ``SpeechConfig(host=self.url)`` set up for fast tests.

        Push-stream audio is not throttled (the SDK otherwise sends the first 5 s at once and the
        rest at 2x real time): ``SPEECH-TransmitLengthBeforeThrottleMs`` is set to 10 minutes.

        Args:
            give_up_after_ms: If set, the SDK reports an unanswered request as ``Canceled``
                (``CancellationReason.Error``) about this long after sending it instead of after
                its defaults: synthesis waits this long for the first audio chunk and does not
                retry (``SpeechSynthesis_FirstChunkTimeoutMs``, ``SpeechSynthesis_MaxRetryTimes``
                = 0; default 40 s, tried twice); recognize-once waits this long for its result,
                plus a whole second, at least, for its stop (``SPEECH-OneShotRecognition-
                OperationTimeoutMs``, ``SPEECH-StopRecognitionTimeoutInSeconds``; default
                60 + 10 s); continuous recognition does not retry a connection that failed to open
                (``SPEECH-Error-RetryConnectionFailures`` = false). Continuous recognition has no
                such bound: the SDK waits 60 s for a WebSocket handshake (not configurable), and
                over an open connection that never answers it reports nothing at all, it only
                reconnects every 60 s.

        All of these properties are undocumented SDK internals; they are for tests only.
        """
        import azure.cognitiveservices.speech as speechsdk

        config = speechsdk.SpeechConfig(host=self.url)
        config.set_property_by_name("SPEECH-TransmitLengthBeforeThrottleMs", "600000")
        if give_up_after_ms is not None:
            if give_up_after_ms <= 0:
                raise ValueError(f"give_up_after_ms={give_up_after_ms!r}; must be > 0")
            for name, value in (
                ("SpeechSynthesis_FirstChunkTimeoutMs", give_up_after_ms),
                ("SpeechSynthesis_MaxRetryTimes", 0),
                ("SPEECH-OneShotRecognition-OperationTimeoutMs", give_up_after_ms),
                ("SPEECH-StopRecognitionTimeoutInSeconds", math.ceil(give_up_after_ms / 1000)),
                ("SPEECH-Error-RetryConnectionFailures", "false"),
            ):
                config.set_property_by_name(name, str(value))
        return config

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> AzureSpeechFake:
        """Start listening on 127.0.0.1, on a free port.

        Raises:
            RuntimeError: The fake is already running.
        """
        if self._ws_server is not None or self._tcp_server is not None:
            raise RuntimeError("AzureSpeechFake is already running")
        async with asyncio.timeout(self.close_timeout):
            if self.mode in ("dead", "refuse"):
                self._tcp_server = await asyncio.start_server(self._tcp_client, "127.0.0.1", 0)
                sockets = list(self._tcp_server.sockets)
            else:
                self._ws_server = await serve(
                    self._ws_client,
                    "127.0.0.1",
                    0,
                    subprotocols=cast(Any, ["USP"]),
                    compression=None,
                    ping_interval=None,
                    max_size=2**24,
                    close_timeout=self.close_timeout,
                )
                sockets = list(self._ws_server.sockets)
        self._port = int(sockets[0].getsockname()[1])
        logger.debug(f"Azure Speech fake ({self.mode}) listening on {self.url}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close every connection and end every task."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the server; safe to call more than once."""
        self._port = None
        if self._ws_server is not None:
            server, self._ws_server = self._ws_server, None
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout):
                    await server.wait_closed()
        if self._tcp_server is not None:
            tcp, self._tcp_server = self._tcp_server, None
            tcp.close()
            # Abort the connections rather than cancel their handlers: asyncio 3.11 reports a
            # cancelled client_connected_cb task as an error in a loop callback.
            for writer in list(self._tcp_writers):
                writer.transport.abort()
            tasks = list(self._tcp_tasks)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self.close_timeout)
                for task in pending:
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout):
                    await tcp.wait_closed()

    def __enter__(self) -> AzureSpeechFake:
        """Start the fake on its own event loop, in a background thread it owns.

        For clients that block their event loop while waiting for the service: pipecat's
        ``AzureSTTService`` drops its recognizer on the loop when it stops, and the SDK's
        destructor waits there for the service to end the turn (about 11 s against a fake
        sharing that loop, which cannot answer meanwhile).

        Raises:
            RuntimeError: The fake is already running.
            TimeoutError: The server did not start within ``close_timeout`` seconds.
        """
        if self._thread is not None or self._port is not None:
            raise RuntimeError("AzureSpeechFake is already running")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve_in_thread(started),),
            name="azure-speech-fake",
            daemon=True,
        )
        self._thread.start()
        try:
            started.result(timeout=self.close_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the fake's thread: close every connection, end every task, join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._thread_loop, self._thread_stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=3 * self.close_timeout)
        if thread.is_alive():
            logger.warning("Azure Speech fake: its thread did not end in time")

    async def _serve_in_thread(self, started: concurrent.futures.Future[None]) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        try:
            async with self:
                started.set_result(None)
                await self._thread_stop.wait()
        except BaseException as error:
            if started.done():
                raise
            started.set_exception(error)
        finally:
            self._thread_loop = self._thread_stop = None

    def _next_utterance_index(self) -> int:
        index, self._utterances = self._utterances, self._utterances + 1
        return index

    # --- connections ---------------------------------------------------------------------------

    async def _ws_client(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # the handler runs after the opening handshake
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        record = ConnectionRecord(path=request.path, headers=headers)
        self.connections.append(record)
        logger.debug(f"Azure Speech fake: connection {record.connection_id} to {record.path}")
        await _Session(self, ws, record).run(answer=self.mode == "serve")

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)
        self._tcp_writers.add(writer)
        record = ConnectionRecord(path=None)
        self.connections.append(record)
        request = b""
        try:
            while self.mode == "dead":
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(65536)
                if not data:
                    break
                if record.path is None and len(request) < 65536:
                    request += data
                    _read_upgrade_request(request, record)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            record.closed = True
            self._tcp_writers.discard(writer)
            writer.transport.abort()
            if task is not None:
                self._tcp_tasks.discard(task)
