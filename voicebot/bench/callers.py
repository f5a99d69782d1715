"""The bench's callers: simulated ACS calls over real sockets, in worker processes.

Each caller is an :class:`~voicebot.testing.acs_simulator.ACSCallSimulator`: it connects at its
staggered start time, sends 20 ms frames in real time for the whole call (silence, then its
scripted turns from WAV files, each followed by a pause), hangs up, and reports per-turn
voice-to-voice latency and how the bot's answers were paced.

Callers run in a few worker processes (:data:`CALLS_PER_PROCESS` each), so that one busy event
loop on the caller side neither delays the frames sent nor the arrival times recorded. Each
caller's ``max_send_lag_ms`` says how far its own loop fell behind; when it is large, the
latencies measured by that process are not to be trusted.

Latency: a turn's voice-to-voice time runs from the send time of its last voiced frame (as the
simulator reports it) to the arrival of its answer's first voiced chunk; :func:`answer_starts`
tells which burst of bot audio answers which turn, so that under overload an answer arriving a
turn late is counted late, not as a quick answer to the next turn.

Pacing: an *answer* is the bot audio from its start until the next answer starts or a
``StopAudio`` arrives. Within an answer, every gap of more than :data:`LATE_GAP_MS` between
consecutive chunks counts as a late frame (a 20 ms frame is due every 20 ms); an *underrun* is
a chunk that arrived after everything before it in the answer would already have finished
playing (the caller heard a hole).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
import wave
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Calls one worker process places at most.
CALLS_PER_PROCESS = 50
#: A gap between consecutive bot frames of one answer above this (ms) is a late frame.
LATE_GAP_MS = 40.0
#: A voiced bot chunk more than this (ms) after the chunk before it starts a new answer.
BURST_GAP_MS = 250.0
#: Bot audio at least this loud (RMS, dBFS) is voiced, as in the ACS simulator.
VOICED_DBFS = -45.0
#: Silence each caller sends after connecting, before its first turn (ms).
LEAD_IN_MS = 500
#: Seconds a call may take beyond its planned length before it is abandoned.
CALL_GRACE_SECS = 30.0


@dataclass(frozen=True)
class CallPlan:
    """One caller: where it calls, when it connects and what it says.

    ``start_at`` is on ``time.monotonic()``'s clock, which all processes of the machine share.
    ``turns`` are ``(wav path, pause after it in ms)``.
    """

    index: int
    url: str
    call_id: str
    start_at: float
    turns: tuple[tuple[str, int], ...]
    min_answer_ms: float = 0.0
    """No answer can arrive sooner after the end of speech (the declared waits, in ms)."""
    lead_in_ms: int = LEAD_IN_MS

    @property
    def length_secs(self) -> float:
        """How long the call lasts once connected, in s."""
        speech = sum(wav_secs(path) + pause / 1000 for path, pause in self.turns)
        return self.lead_in_ms / 1000 + speech


@dataclass
class Pacing:
    """How the bot's answers of one call were paced (see the module docstring)."""

    answers: int = 0
    frames: int = 0
    late_frames: int = 0
    underruns: int = 0
    max_gap_ms: float = 0.0


@dataclass
class CallResult:
    """What one caller saw. Times on ``time.monotonic()``'s clock (s); latencies in ms."""

    index: int
    call_id: str
    connected_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    latencies_ms: list[float | None] = field(default_factory=list)
    """Voice-to-voice time of each turn; None: no answer before the next turn."""
    pacing: Pacing = field(default_factory=Pacing)
    stop_audio: int = 0
    max_send_lag_ms: float = 0.0
    closed_by: str | None = None
    close_code: int | None = None

    @property
    def ok(self) -> bool:
        """Connected, played every turn and hung up itself."""
        return self.error is None and self.closed_by == "caller"


def wav_secs(path: str | os.PathLike[str]) -> float:
    """Length of a WAV file in s."""
    with wave.open(os.fspath(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def plan_turns(
    samples: Sequence[Path], duration_secs: float, pause_ms: int, lead_in_ms: int = LEAD_IN_MS
) -> tuple[tuple[str, int], ...]:
    """The samples in turn, each followed by ``pause_ms``, as many as fit in ``duration_secs``
    after the lead-in (at least one)."""
    turns: list[tuple[str, int]] = []
    used = lead_in_ms / 1000
    while True:
        path = samples[len(turns) % len(samples)]
        length = wav_secs(path) + pause_ms / 1000
        if turns and used + length > duration_secs:
            return tuple(turns)
        turns.append((str(path), pause_ms))
        used += length


BotChunk = tuple[float, float, bool]
"""One bot audio chunk: arrival (ms since the call started), duration (ms), voiced or not."""


def voiced(pcm: bytes, threshold_dbfs: float = VOICED_DBFS) -> bool:
    """Whether 16-bit PCM is at least ``threshold_dbfs`` loud (RMS, dB of full scale)."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return False
    rms = math.sqrt(float(np.mean(samples * samples)))
    return rms > 0 and 20 * math.log10(rms / 32768) >= threshold_dbfs


def answer_starts(
    chunks: Sequence[BotChunk],
    speech_ends: Sequence[float | None],
    stop_audio_ms: Sequence[float],
    min_answer_ms: float,
) -> list[float | None]:
    """When each turn's answer started to arrive (ms since the call started), None if it did not.

    An answer starts with a voiced chunk that begins a burst: the call's first chunk, one after
    a ``StopAudio``, or one more than :data:`BURST_GAP_MS` after the chunk before it. Turn i's
    answer is the first burst starting in ``[end_i + min_answer_ms, end_i+1 + min_answer_ms)``,
    ``end`` being the turns' ends of speech: no answer can come sooner than the declared waits
    after the speech it answers, so a late answer to one turn is not taken for the next one's.
    """
    bursts: list[float] = []
    previous: float | None = None
    in_burst = False  # a voiced chunk has started the current burst
    for t, _, is_voiced in chunks:
        gap = math.inf if previous is None else t - previous
        stopped = previous is not None and any(previous < s <= t for s in stop_audio_ms)
        if gap > BURST_GAP_MS or stopped:
            in_burst = False
        if is_voiced and not in_burst:
            bursts.append(t)
            in_burst = True
        previous = t
    starts: list[float | None] = []
    for i, end in enumerate(speech_ends):
        if end is None:
            starts.append(None)
            continue
        following = [e for e in speech_ends[i + 1 :] if e is not None]
        lo = end + min_answer_ms
        hi = following[0] + min_answer_ms if following else math.inf
        starts.append(next((b for b in bursts if lo <= b < hi), None))
    return starts


def pacing_of(
    chunks: Sequence[BotChunk],
    starts: Sequence[float | None],
    stop_audio_ms: Sequence[float],
) -> Pacing:
    """Count the late frames and underruns of a call's answers (see the module docstring).

    ``starts`` are the answers' starts from :func:`answer_starts`; an answer lasts until the
    next answer starts or a ``StopAudio`` arrives.
    """
    pacing = Pacing()
    for i, start in enumerate(starts):
        if start is None:
            continue
        later = [s for s in starts[i + 1 :] if s is not None]
        end = min([*later[:1], *(t for t in stop_audio_ms if t > start), math.inf])
        answer = [(t, d) for t, d, _ in chunks if start <= t < end]
        if not answer:
            continue
        pacing.answers += 1
        pacing.frames += len(answer)
        played_until = answer[0][0] + answer[0][1]
        for (t_prev, _), (t, d) in zip(answer, answer[1:], strict=False):
            gap = t - t_prev
            pacing.max_gap_ms = max(pacing.max_gap_ms, gap)
            if gap > LATE_GAP_MS:
                pacing.late_frames += 1
            if t > played_until:
                pacing.underruns += 1
                played_until = t
            played_until += d
    return pacing


async def place_call(plan: CallPlan) -> CallResult:
    """Place one call as planned; failures are recorded in the result, never raised."""
    from voicebot.testing.acs_simulator import ACSCallSimulator, Turn

    result = CallResult(plan.index, plan.call_id)
    await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))
    sim = ACSCallSimulator(plan.url, call_connection_id=plan.call_id)
    try:
        async with asyncio.timeout(plan.length_secs + CALL_GRACE_SECS):
            async with sim:
                result.connected_at = time.monotonic()
                await sim.silence(plan.lead_in_ms)
                await sim.play([Turn(path, pause_after_ms=pause) for path, pause in plan.turns])
    except Exception as exc:  # counted, not raised: one failed call must not stop the others
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.ended_at = time.monotonic()
    if result.connected_at is None:
        return result
    report = sim.report()
    result.stop_audio = len(report.stop_audio_ms)
    result.max_send_lag_ms = report.max_send_lag_ms
    result.closed_by, result.close_code = report.closed_by, report.close_code
    if report.error and result.error is None:
        result.error = report.error
    bytes_per_ms = sim.sample_rate * 2 / 1000
    chunks = [(c.t_ms, len(c.pcm) / bytes_per_ms, voiced(c.pcm)) for c in sim.bot_audio]
    ends = [turn.speech_end_ms for turn in report.turns]
    starts = answer_starts(chunks, ends, report.stop_audio_ms, plan.min_answer_ms)
    result.latencies_ms = [
        None if start is None or end is None else start - end
        for start, end in zip(starts, ends, strict=True)
    ]
    result.pacing = pacing_of(chunks, starts, report.stop_audio_ms)
    return result


async def place_calls(plans: Sequence[CallPlan]) -> list[CallResult]:
    """Place every planned call concurrently, in this process."""
    return list(await asyncio.gather(*(place_call(plan) for plan in plans)))


def _place_calls_blocking(plans: Sequence[CallPlan]) -> list[CallResult]:
    """A worker process's job: place its share of the calls on an event loop of its own."""
    from voicebot.logs import configure_logging

    configure_logging("WARNING")
    return asyncio.run(place_calls(plans))


async def place_calls_in_processes(
    plans: Sequence[CallPlan], *, calls_per_process: int = CALLS_PER_PROCESS
) -> list[CallResult]:
    """Place the calls from ``ceil(len(plans) / calls_per_process)`` worker processes.

    Calls are dealt out round-robin, so every process has its share of early and late
    starters. Bounded: a process that has not returned its results by the last planned end
    plus :data:`CALL_GRACE_SECS` (and 60 s to start) has its calls counted as failed.
    """
    if not plans:
        return []
    processes = max(1, math.ceil(len(plans) / calls_per_process))
    shares = [list(plans[i::processes]) for i in range(processes)]
    last_end = max(plan.start_at + plan.length_secs for plan in plans)
    budget = max(0.0, last_end - time.monotonic()) + CALL_GRACE_SECS + 60.0
    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(
        max_workers=processes, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        futures = [loop.run_in_executor(executor, _place_calls_blocking, share) for share in shares]
        done, _ = await asyncio.wait(futures, timeout=budget)
        results: list[CallResult] = []
        for share, future in zip(shares, futures, strict=True):
            if future in done and future.exception() is None:
                results.extend(future.result())
                continue
            why = "caller process timed out" if future not in done else repr(future.exception())
            results.extend(CallResult(p.index, p.call_id, error=why) for p in share)
        return sorted(results, key=lambda r: r.index)
    finally:
        # A worker still running now is stuck: it is killed, not waited for.
        workers = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.join(timeout=2.0)
            if worker.is_alive():
                worker.kill()
