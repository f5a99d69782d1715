"""``voicebot call``: one simulated call through a pipeline, turn by turn, with latencies.

The caller's turns are WAV files played in real time as 20 ms frames (or on a virtual clock with
``--fast``), each followed by a pause. For every turn it reports what was recognised, what the bot
answered, and the response latency: from the end of the caller's speech in the audio (the last
20 ms frame louder than -40 dBFS) to the first bot audio frame after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
)

from voicebot.build.problems import ConfigError
from voicebot.testing.harness import CallHarness
from voicebot.testing.recorder import Recorded
from voicebot.testing.wav import frame_bytes, read_wav, sample, write_wav

#: A 20 ms frame whose RMS is below this (in dBFS) counts as silence when finding speech end.
SPEECH_FLOOR_DBFS = -40.0


@dataclass
class Turn:
    """One caller turn and the bot's answer to it."""

    user_text: str
    agent: str | None
    bot_text: str
    latency_ms: float | None
    """End of caller speech in the audio → first bot audio frame; None if the bot said nothing."""


@dataclass
class CallReport:
    call_id: str
    turns: list[Turn] = field(default_factory=list)
    handoffs: list[dict[str, str]] = field(default_factory=list)
    outcome: str = ""


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


def _window(records: list[Recorded], start: float, end: float) -> list[Recorded]:
    return [r for r in records if start <= r.at < end and r.direction.name == "DOWNSTREAM"]


def _replies(records: list[Recorded]) -> str:
    parts: list[str] = []
    inside = False
    for record in records:
        frame = record.frame
        if isinstance(frame, LLMFullResponseStartFrame):
            inside = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            inside = False
        elif inside and isinstance(frame, LLMTextFrame):
            parts.append(frame.text)
    return " ".join("".join(parts).split())


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
    audio: list[Path],
    *,
    pause_secs: float,
    fast: bool,
    out: Path | None = None,
) -> CallReport:
    """Run one call through ``pipeline`` with ``audio`` as the caller's turns."""
    async with CallHarness(
        pipeline, virtual_clock=fast, check_tasks=False, call_id="simulated-call"
    ) as call:
        rate = call.rate
        marks: list[tuple[float, float]] = []  # (turn start, end of speech) in call time
        for wav in audio:
            pcm = read_wav(wav, rate)
            start = call.now
            await call.speak(pcm)
            marks.append((start, start + speech_end_secs(pcm, rate)))
            await call.silence(pause_secs * 1000)
        outcome = await call.end()

    report = CallReport(call_id=call.call.call_id, outcome=outcome.value)
    frames = call.frames
    for index, (start, speech_end) in enumerate(marks):
        end = marks[index + 1][0] if index + 1 < len(marks) else float("inf")
        window = _window(frames, start, end)
        user_text = " ".join(
            r.frame.text for r in window if isinstance(r.frame, TranscriptionFrame)
        )
        first_audio = next(
            (
                r.at
                for r in call.output
                if isinstance(r.frame, OutputAudioRawFrame) and speech_end <= r.at < end
            ),
            None,
        )
        latency = None if first_audio is None else round((first_audio - speech_end) * 1000, 1)
        report.turns.append(Turn(user_text, None, _replies(window), latency))
    if out is not None:
        write_wav(
            out, bot_audio_timeline(call.output, call.spec.audio.out_rate), call.spec.audio.out_rate
        )
    return report


def print_report(report: CallReport) -> None:
    for index, turn in enumerate(report.turns, 1):
        latency = "no answer" if turn.latency_ms is None else f"{turn.latency_ms:.0f} ms"
        print(f"turn {index}  [{latency}]")
        print(f"  caller: {turn.user_text or '(nothing recognised)'}")
        print(f"  bot ({turn.agent or '-'}): {turn.bot_text or '(silence)'}")
    print(f"call {report.call_id} ended: {report.outcome}")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``voicebot call`` (arguments from :mod:`voicebot.cli`)."""
    audio = list(args.audio) or [sample("help_bill"), sample("balance")]
    for path in audio:
        if not Path(path).is_file():
            print(f"voicebot call: no such audio file: {path}", file=sys.stderr)
            return 2
    try:
        report = asyncio.run(
            simulate(args.pipeline, audio, pause_secs=args.pause, fast=args.fast, out=args.out)
        )
    except ConfigError as exc:
        print(f"voicebot call: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0
