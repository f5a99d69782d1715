"""``voicebot call``: place one simulated phone call and report it turn by turn.

By default the call goes over real sockets: a voicebot server starts in this process (uvicorn on
127.0.0.1, a free port, this event loop, a random signing secret) and an
:class:`~voicebot.testing.acs_simulator.ACSCallSimulator` plays ACS against its signed media URL.
With ``url`` it calls a separately running server instead. With ``fast`` there are no sockets:
the pipeline runs in a :class:`~voicebot.testing.CallHarness` on a virtual clock.

The caller first listens to the greeting, if any. Then each turn's WAV plays in real time as
20 ms frames, and the caller stays silent for at least ``pause_secs`` and until the bot has
answered and gone quiet (:data:`QUIET_MS`), or has not started answering within
:data:`ANSWER_TIMEOUT_MS` of the end of the caller's speech.

Per turn it reports what the caller said as recognised, which agent answered and with which
voice, what the bot said and the response latency: ms from the end of the caller's speech in the
audio to the first bot audio frame (the simulator's rule over sockets; the last 20 ms frame
louder than -40 dBFS to the first output audio frame in the harness). Texts come from the
server's per-call record (:class:`~voicebot.processors.transcript.CallTranscript`), which only an
in-process server can be asked for: with ``url`` they are None and ``texts_available`` is False.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from pipecat.frames.frames import OutputAudioRawFrame
from pydantic import SecretStr

from voicebot.build.problems import ConfigError
from voicebot.config import Settings, load_settings
from voicebot.processors.transcript import CallTranscript, TranscriptRecorder
from voicebot.testing.harness import CallHarness
from voicebot.testing.recorder import Recorded
from voicebot.testing.wav import frame_bytes, read_wav, sample, write_wav

if TYPE_CHECKING:
    import uvicorn

    from voicebot.server.app import AppState
    from voicebot.testing.acs_simulator import ACSCallSimulator

#: A 20 ms frame whose RMS is below this (in dBFS) counts as silence when finding speech end.
SPEECH_FLOOR_DBFS = -40.0

#: The pipeline the in-process server and ``--fast`` run when none is given.
DEFAULT_PIPELINE = Path("pipelines/acs_phone.yaml")

#: The caller waits this long (ms from the call start) for a greeting to begin.
GREETING_TIMEOUT_MS = 1500.0
#: ... and this long (ms from the end of its speech) for an answer to begin.
ANSWER_TIMEOUT_MS = 5000.0
#: The bot has finished speaking once it has been silent this long (ms).
QUIET_MS = 600.0
#: The caller never listens longer than this (ms) before its next turn.
MAX_LISTEN_MS = 30000.0
#: How often the caller checks whether to go on listening (ms of silence sent per check).
LISTEN_STEP_MS = 100


@dataclass
class Turn:
    """One caller turn and the bot's answer to it. Texts are None when not known."""

    user_text: str | None
    agent: str | None
    bot_text: str | None
    latency_ms: float | None
    """End of caller speech in the audio → first bot audio frame; None if the bot said nothing."""
    bot_audio_ms: float = 0.0
    """Bot audio received in the turn (until the next turn started), in ms."""
    voice: str | None = None
    """The voice ``agent`` speaks with, as the agent router names it (on the offline TTS with
    the local voice: ``en-US-AndrewMultilingualNeural (local: joe, pitch 0.86, length 1.05)``)."""


@dataclass
class CallReport:
    """What ``voicebot call`` prints (``--json`` prints it as is)."""

    call_id: str
    turns: list[Turn] = field(default_factory=list)
    handoffs: list[dict[str, Any]] = field(default_factory=list)
    greeting: str | None = None
    outcome: str | None = None
    """How the call ended on the server (a ``CallOutcome`` value); None if not known."""
    texts_available: bool = True
    """False when the server's transcript could not be read (a remote server)."""
    error: str | None = None
    """Why the call failed, e.g. the server closed it with an error code."""


# --- in-process server ---------------------------------------------------------------------------


class LocalServer:
    """A voicebot server in this event loop on 127.0.0.1 and a free port (async context manager).

    ``settings.host``/``port`` are ignored. Starting waits until uvicorn listens, the app's
    lifespan having warmed the providers up (at most ``start_timeout`` s). Leaving stops it —
    open calls are cancelled by the app's shutdown — within ``stop_timeout`` s, after which its
    task is cancelled.
    """

    def __init__(
        self, settings: Settings, *, start_timeout: float = 10.0, stop_timeout: float = 5.0
    ) -> None:
        from voicebot.server import create_app

        self.settings = settings
        self.app = create_app(settings)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def state(self) -> AppState:
        """The app's shared state: settings, active calls, resources (the call records)."""
        state: AppState = self.app.state.voicebot
        return state

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def media_url(self, call_id: str, ttl_secs: int | None = None) -> str:
        """A signed media-stream URL for ``call_id``."""
        from voicebot.acs.tokens import media_url

        ttl = ttl_secs if ttl_secs is not None else self.settings.media_token_ttl_secs
        return media_url(self.ws_base, self.state.signing_key, call_id, ttl)

    def transcript(self, call_id: str) -> CallTranscript | None:
        """The server's record of call ``call_id``, if it has one."""
        from voicebot.server.media import transcripts

        return transcripts(self.state).get(call_id)

    async def __aenter__(self) -> LocalServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            lifespan="on",
            timeout_graceful_shutdown=max(1, int(self._stop_timeout) - 1),
        )
        server = self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(
            server.serve(sockets=[sock]), name=f"voicebot-server-{self.port}"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while not server.started:
            if self._task.done() or loop.time() > deadline:
                await self.__aexit__(None, None, None)
                raise RuntimeError(f"the in-process server did not start on port {self.port}")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None and self._server is not None and not task.done():
            self._server.should_exit = True
            await asyncio.wait({task}, timeout=self._stop_timeout)
            if not task.done():
                self._server.force_exit = True
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise RuntimeError("the in-process server failed") from task.exception()
        if self._socket is not None:
            self._socket.close()


def local_settings(pipeline: Path, **overrides: Any) -> Settings:
    """Settings for an in-process server: 127.0.0.1, a random signing secret, ``pipeline``."""
    return load_settings(
        pipeline=pipeline,
        host="127.0.0.1",
        signing_secret=SecretStr(secrets.token_urlsafe(32)),
        **overrides,
    )


# --- a call over sockets ------------------------------------------------------------------------


async def call_over_socket(
    url: str,
    audio: Sequence[Path],
    *,
    call_id: str,
    pause_secs: float,
    rate: int = 16000,
    out: Path | None = None,
    server: LocalServer | None = None,
) -> CallReport:
    """Place one call on the media WebSocket at ``url`` (signed for ``call_id``).

    With ``server`` (the in-process one serving ``url``) the report has the texts from its
    per-call record; without, only timings and audio.
    """
    from websockets.exceptions import ConnectionClosed

    from voicebot.testing.acs_simulator import ACSCallSimulator

    sim = ACSCallSimulator(url, call_connection_id=call_id, sample_rate=rate)
    try:
        async with sim:
            starts, starts_ms = await _converse(sim, audio, pause_secs)
    except ConnectionClosed as closed:  # refused before the call began
        code, reason = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (1006, "")
        error = f"the server closed the call: {code} {reason}".rstrip()
        return CallReport(call_id=call_id, texts_available=server is not None, error=error)
    result = sim.report()
    if out is not None:
        sim.write_bot_wav(out)

    report = CallReport(call_id=call_id, texts_available=server is not None)
    texts: list[tuple[str | None, str | None, str | None]] = [(None, None, None)] * len(starts)
    record = server.transcript(call_id) if server is not None else None
    if record is not None:
        await record.wait_finished(timeout=5.0)
        report.outcome = record.outcome
        report.handoffs = record.handoffs
        report.greeting, texts = _texts_by_turn(record, starts)
    for index, turn in enumerate(result.turns):
        until = starts_ms[index + 1] if index + 1 < len(starts_ms) else float("inf")
        audio_ms = sum(
            _duration_ms(c.pcm, rate) for c in sim.bot_audio if starts_ms[index] <= c.t_ms < until
        )
        latency = None if turn.latency_ms is None else round(turn.latency_ms, 1)
        report.turns.append(Turn(*texts[index], latency, round(audio_ms, 1)))
    _name_voices(report.turns, record)
    if result.closed_by == "bot" and result.close_code != 1000:
        report.error = f"the server closed the call: {result.close_code} {result.close_reason}"
    return report


async def _converse(
    sim: ACSCallSimulator, audio: Sequence[Path], pause_secs: float
) -> tuple[list[float], list[float]]:
    """Listen to the greeting, then play each turn and listen to the answer.

    Returns when each turn began, as ``time.time()`` (the server record's clock) and as ms of
    call time (the simulator's clock).
    """
    from voicebot.testing.acs_simulator import Turn as CallerTurn

    starts: list[float] = []
    starts_ms: list[float] = []
    t0 = time.monotonic()  # within a millisecond of the simulator's call start

    def now_ms() -> float:
        return (time.monotonic() - t0) * 1000

    async def listen(since_ms: float, min_ms: float, timeout_ms: float) -> None:
        began = now_ms()
        while sim.report().closed_by is None:
            played = [
                (c.t_ms, c.t_ms + _duration_ms(c.pcm, sim.sample_rate)) for c in sim.bot_audio
            ]
            if not _keep_listening(now_ms(), began, since_ms, min_ms, timeout_ms, played):
                return
            await sim.silence(LISTEN_STEP_MS)

    await listen(0.0, 0.0, GREETING_TIMEOUT_MS)
    for wav in audio:
        if sim.report().closed_by is not None:
            break
        starts.append(time.time())
        starts_ms.append(now_ms())
        await sim.play([CallerTurn(wav, pause_after_ms=0)])
        speech_end = sim.report().turns[-1].speech_end_ms
        await listen(speech_end or 0.0, pause_secs * 1000, ANSWER_TIMEOUT_MS)
    return starts, starts_ms


def _duration_ms(pcm: bytes, rate: int) -> float:
    """Milliseconds of PCM16 mono ``pcm`` at ``rate`` Hz."""
    return len(pcm) / 2 / rate * 1000


async def call_local(
    pipeline: Path,
    audio: Sequence[Path],
    *,
    pause_secs: float,
    rate: int = 16000,
    out: Path | None = None,
) -> CallReport:
    """Start a server in this process for ``pipeline`` and place one call on it."""
    async with LocalServer(local_settings(pipeline)) as server:
        call_id = f"sim-{uuid.uuid4().hex[:12]}"
        return await call_over_socket(
            server.media_url(call_id),
            audio,
            call_id=call_id,
            pause_secs=pause_secs,
            rate=rate,
            out=out,
            server=server,
        )


def remote_media_url(url: str, call_id: str) -> tuple[str, str]:
    """``(media URL, call id)`` for ``--url``.

    A URL with a ``token`` (from ``voicebot media-url``) is used as is, with its ``call_id``.
    Otherwise ``url`` is the server's base and is signed for ``call_id`` with
    ``VOICEBOT_SIGNING_SECRET``.

    Raises:
        ValueError: No token in the URL and no signing secret set.
    """
    query = parse_qs(urlsplit(url).query)
    if "token" in query:
        return url, query.get("call_id", [call_id])[0]
    from voicebot.acs.tokens import media_url

    settings = load_settings()
    if settings.signing_secret is None:
        raise ValueError(
            f"{url} has no token: pass a URL from `voicebot media-url`, or set "
            "VOICEBOT_SIGNING_SECRET to the server's signing secret"
        )
    key = settings.signing_secret.get_secret_value().encode()
    return media_url(url, key, call_id, settings.media_token_ttl_secs), call_id


def _keep_listening(
    now_ms: float,
    began_ms: float,
    since_ms: float,
    min_ms: float,
    timeout_ms: float,
    bot_audio: list[tuple[float, float]],
) -> bool:
    """Whether the caller goes on listening (all times in ms of call time).

    It listens at least ``min_ms`` from ``began_ms`` and at most :data:`MAX_LISTEN_MS`; in
    between until the bot's answer (audio from ``since_ms`` on; ``bot_audio`` is (start, end)
    of each chunk) has been followed by :data:`QUIET_MS` of quiet, or, when no answer has begun,
    until ``timeout_ms`` after ``since_ms``.
    """
    listened = now_ms - began_ms
    if listened < min_ms:
        return True
    if listened >= MAX_LISTEN_MS:
        return False
    answer = [end for start, end in bot_audio if end > since_ms]
    if not answer:
        return now_ms - since_ms < timeout_ms
    return now_ms - max(answer) < QUIET_MS


def _texts_by_turn(
    record: CallTranscript, starts: Sequence[float]
) -> tuple[str | None, list[tuple[str | None, str | None, str | None]]]:
    """The greeting and ``(user_text, agent, bot_text)`` per turn from a call's record.

    Turn ``i`` owns what started between ``starts[i]`` and ``starts[i + 1]`` (same clock as the
    record's times); bot utterances before the first turn are the greeting. A turn nothing was
    recognised in has ``user_text`` None; one the bot did not answer, ``bot_text`` None.
    """

    def joined(role: str, start: float, end: float) -> tuple[str | None, str | None]:
        said = [u for u in record.utterances if u.role == role and start <= u.at < end and u.text]
        text = " ".join(u.text for u in said) or None
        # A turn answered by a handoff belongs to the agent handed to: the last one that spoke.
        return text, next((u.agent for u in reversed(said) if u.agent), None)

    first = starts[0] if starts else float("inf")
    greeting, _ = joined("bot", float("-inf"), first)
    turns = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else float("inf")
        user_text, _ = joined("user", start, end)
        bot_text, agent = joined("bot", start, end)
        turns.append((user_text, agent, bot_text))
    return greeting, turns


def _name_voices(turns: list[Turn], record: CallTranscript | None) -> None:
    """Set each answered turn's ``voice``: the one its agent was entered with (the router's
    ``enter`` decisions name it)."""
    if record is None:
        return
    voices = {d.agent: d.target for d in record.decisions if d.kind == "enter" and d.target}
    for turn in turns:
        turn.voice = voices.get(turn.agent) if turn.agent else None


# --- a call through the harness (no sockets) ----------------------------------------------------


def speech_end_secs(pcm: bytes, rate: int, floor_dbfs: float = SPEECH_FLOOR_DBFS) -> float:
    """Seconds from the start of ``pcm`` to the end of its last frame louder than the floor."""
    size = frame_bytes(rate) // 2
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    frames = len(samples) // size
    if frames == 0:
        return 0.0
    rms = np.sqrt(np.mean(samples[: frames * size].reshape(frames, size) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms) > floor_dbfs)[0]
    return 0.0 if len(loud) == 0 else float((loud[-1] + 1) * size / rate)


def _playout(records: list[Recorded], rate: int) -> list[tuple[float, float]]:
    """(start, end) in ms of each bot audio frame as played: in real time, back to back."""
    played: list[tuple[float, float]] = []
    end = 0.0
    for record in records:
        frame = record.frame
        if isinstance(frame, OutputAudioRawFrame):
            start = max(record.at * 1000, end)
            end = start + len(frame.audio) / 2 / rate * 1000
            played.append((start, end))
    return played


def bot_audio_timeline(records: list[Recorded], rate: int) -> bytes:
    """The bot's audio as the caller would hear it: each chunk at its time, silence between.

    Chunks that arrive faster than real time queue behind each other, as a paced output would
    play them.
    """
    out = bytearray()
    for record in records:
        frame = record.frame
        if not isinstance(frame, OutputAudioRawFrame):
            continue
        start = round(record.at * rate) * 2
        if len(out) < start:
            out.extend(b"\x00" * (start - len(out)))
        out.extend(frame.audio)
    return bytes(out)


async def simulate(
    pipeline: Path,
    audio: Sequence[Path],
    *,
    pause_secs: float,
    fast: bool,
    out: Path | None = None,
    call_id: str = "simulated-call",
) -> CallReport:
    """Run one call through ``pipeline`` in a harness (no sockets), on a virtual clock if ``fast``.

    The caller behaves as over sockets; times are the harness's (seconds since the call began).
    """
    async with CallHarness(
        pipeline, virtual_clock=fast, check_tasks=False, call_id=call_id
    ) as call:
        rate, out_rate = call.rate, call.spec.audio.out_rate

        async def listen(since_ms: float, min_ms: float, timeout_ms: float) -> None:
            began = call.now * 1000
            while _keep_listening(
                call.now * 1000,
                began,
                since_ms,
                min_ms,
                timeout_ms,
                _playout(call.output, out_rate),
            ):
                await call.silence(LISTEN_STEP_MS)

        await listen(0.0, 0.0, GREETING_TIMEOUT_MS)
        marks: list[tuple[float, float]] = []  # (turn start, end of speech) in seconds
        for wav in audio:
            pcm = read_wav(wav, rate)
            start = call.now
            await call.speak(pcm)
            marks.append((start, start + speech_end_secs(pcm, rate)))
            await listen(marks[-1][1] * 1000, pause_secs * 1000, ANSWER_TIMEOUT_MS)
        outcome = await call.end()

    record = CallTranscript(call_id)
    recorder = TranscriptRecorder(record)
    for recorded in call.frames:
        if recorded.direction.name == "DOWNSTREAM":
            recorder.record(recorded.frame, recorded.at)
    greeting, texts = _texts_by_turn(record, [start for start, _ in marks])
    report = CallReport(call_id, handoffs=record.handoffs, greeting=greeting, outcome=outcome.value)
    played = _playout(call.output, out_rate)
    for index, (start, speech_end) in enumerate(marks):
        end = marks[index + 1][0] if index + 1 < len(marks) else float("inf")
        first_audio = next(
            (
                r.at
                for r in call.output
                if isinstance(r.frame, OutputAudioRawFrame) and speech_end <= r.at < end
            ),
            None,
        )
        latency = None if first_audio is None else round((first_audio - speech_end) * 1000, 1)
        audio_ms = sum(e - s for s, e in played if start * 1000 <= s < end * 1000)
        report.turns.append(Turn(*texts[index], latency, round(audio_ms, 1)))
    _name_voices(report.turns, record)
    if out is not None:
        write_wav(out, bot_audio_timeline(call.output, out_rate), out_rate)
    return report


# --- the command --------------------------------------------------------------------------------


def print_report(report: CallReport) -> None:
    if not report.texts_available:
        print("(texts not available from a remote server: timings and audio only)")
    if report.greeting:
        print(f"greeting: {report.greeting}")
    voice = None
    for index, turn in enumerate(report.turns, 1):
        latency = "no answer" if turn.latency_ms is None else f"{turn.latency_ms:.0f} ms"
        print(f"turn {index}  [{latency}, {turn.bot_audio_ms / 1000:.1f} s of bot audio]")
        if report.texts_available:
            print(f"  caller: {turn.user_text or '(nothing recognised)'}")
            print(f"  bot ({turn.agent or '-'}): {turn.bot_text or '(silence)'}")
        if turn.voice and turn.voice != voice:
            print(f"  voice: {turn.voice}")
            voice = turn.voice
    for handoff in report.handoffs:
        print(f"handoff (turn {handoff['turn']}): {handoff['from']} → {handoff['to']}")
    print(f"call {report.call_id} ended: {_ending(report.outcome)}")


#: How the text output explains a call's outcome (the simulated caller hangs up after its turns).
_ENDINGS = {
    "cancelled": "cancelled (the caller hung up)",
    "completed": "completed (the pipeline ended normally)",
    "idle": "idle (nobody spoke for the idle timeout)",
    "max_duration": "max_duration (the call reached its maximum duration)",
}


def _ending(outcome: str | None) -> str:
    if outcome is None:
        return "unknown (remote server)"
    return _ENDINGS.get(outcome, outcome)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``voicebot call`` (arguments from :mod:`voicebot.cli`)."""
    audio = list(args.audio) or [sample("help_bill"), sample("balance")]
    for path in audio:
        if not Path(path).is_file():
            print(f"voicebot call: no such audio file: {path}", file=sys.stderr)
            return 2
    if args.fast and args.url:
        print("voicebot call: --fast runs without a server; drop --url or --fast", file=sys.stderr)
        return 2
    pipeline = args.pipeline or DEFAULT_PIPELINE
    try:
        if args.fast:
            report = asyncio.run(
                simulate(pipeline, audio, pause_secs=args.pause, fast=True, out=args.out)
            )
        elif args.url:
            url, call_id = remote_media_url(args.url, f"sim-{uuid.uuid4().hex[:12]}")
            report = asyncio.run(
                call_over_socket(
                    url, audio, call_id=call_id, pause_secs=args.pause, rate=args.rate, out=args.out
                )
            )
        else:
            report = asyncio.run(
                call_local(pipeline, audio, pause_secs=args.pause, rate=args.rate, out=args.out)
            )
    except ConfigError as exc:
        print(f"voicebot call: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"voicebot call: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    if report.error:
        print(f"voicebot call: {report.error}", file=sys.stderr)
        return 1
    return 0
