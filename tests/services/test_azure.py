"""``provider: azure`` built from YAML and run with the real Speech SDK against the fake service.

Every test talks to :class:`~voicebot.testing.azure_speech.AzureSpeechFake` over a real socket,
running on its own thread (pipecat's recognizer blocks its event loop while it stops). Calls run
in real time (``virtual_clock=False``): the SDK's threads do not follow a virtual clock. Run with
``-s`` to see the measured latencies.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pydantic import ValidationError

from voicebot.build.builder import warm_up
from voicebot.build.loader import load_pipeline
from voicebot.build.problems import ConfigError
from voicebot.runner import CallOutcome
from voicebot.services import azure
from voicebot.services.azure import (
    AzureSpeechSettingsError,
    AzureSTTParams,
    AzureTTSParams,
    PooledAzureTTSService,
    SynthesizerPoolSettings,
    WatchedAzureSTTService,
    speech_credentials,
    speech_status,
)
from voicebot.services.resources import SharedResources
from voicebot.testing import CallHarness, read_wav, sample
from voicebot.testing.azure_speech import AzureSpeechFake, ScriptedRecognizer, ToneSynthesizer

WritePipeline = Callable[..., Path]

BALANCE = "What is my balance?"
GREETING = "Hello, thanks for calling. How can I help?"
REPLY = "Your balance is 42 dollars. Is there anything else I can help you with today?"
KEY = "test-key-0123456789"

STT_PIPELINE = """
name: azure-stt
transport: acs
audio: {{in_rate: {rate}, out_rate: {rate}}}
processors:{vad}
  - stt: {{provider: azure, language: en-GB, segmentation_silence_ms: {segmentation}, profanity: raw{stt}}}
  - echo        # stands in for the rest of the bot: transcripts pass on to the end
"""

TTS_PIPELINE = """
name: azure-tts
transport: acs
audio: {{in_rate: 16000, out_rate: {rate}}}
processors:
  - stt: {{provider: fake}}
  - llm: {{provider: fake, greeting: "{greeting}", ttft_ms: 0, token_interval_ms: {interval},
           replies: ["{reply}"]}}
  - tts: {{provider: azure, voice: en-US-AvaNeural, style: cheerful, rate: 1.1{tts}}}
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def speech_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[AzureSpeechFake], None]:
    """Points the Azure providers at a running fake (key and endpoint from the environment)."""
    for name in ("AZURE_SPEECH_REGION", "VOICEBOT_TTS_POOL_RATES", "VOICEBOT_TTS_POOL_WARMUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VOICEBOT_TTS_POOL_SIZE", "2")

    def point_at(fake: AzureSpeechFake) -> None:
        monkeypatch.setenv("AZURE_SPEECH_KEY", KEY)
        monkeypatch.setenv("AZURE_SPEECH_ENDPOINT", fake.url)

    return point_at


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Messages loguru logs at WARNING and above while the test runs."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


def stt_pipeline(
    write: WritePipeline, rate: int = 16000, segmentation_silence_ms: int = 300, **stt: Any
) -> Path:
    """``vad → stt azure → echo`` at ``rate``; without the VAD at 24 kHz (Silero hears 8 and
    16 kHz only; Azure segments speech itself)."""
    extra = "".join(f", {key}: {value}" for key, value in stt.items())
    vad = "\n  - vad: {provider: silero, stop_secs: 0.2}" if rate == 16000 else ""
    text = STT_PIPELINE.format(rate=rate, vad=vad, segmentation=segmentation_silence_ms, stt=extra)
    return write(text, "stt.yaml")


def tts_pipeline(
    write: WritePipeline,
    rate: int = 16000,
    *,
    greeting: str = GREETING,
    interval: int = 10,
    **tts: Any,
) -> Path:
    extra = "".join(f", {key}: {value}" for key, value in tts.items())
    text = TTS_PIPELINE.format(
        rate=rate, greeting=greeting, interval=interval, reply=REPLY, tts=extra
    )
    return write(text, "tts.yaml")


def speech_bounds(pcm: bytes, rate: int, threshold_dbfs: float = -40) -> tuple[float, float]:
    """Seconds from the start of ``pcm`` to the start of its first and the end of its last 10 ms
    frame at or above the threshold: where the fake (like Azure) hears speech begin and end."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = rate // 100
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(20 * np.log10(np.maximum(rms, 1e-9) / 32768) >= threshold_dbfs)[0]
    return float(loud[0] * 0.01), float((loud[-1] + 1) * 0.01)


async def ended(call: CallHarness, timeout: float) -> float:
    """Wait for the call to end by itself; returns how long that took (s)."""
    start = time.monotonic()
    while call.call.ended_at is None:
        assert time.monotonic() - start < timeout, f"the call did not end within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------
# Settings and params
# --------------------------------------------------------------------------------------------


def test_missing_settings_are_all_named_and_the_key_never_shown() -> None:
    with pytest.raises(AzureSpeechSettingsError) as missing:
        speech_credentials({})
    assert str(missing.value) == (
        "Azure Speech settings: AZURE_SPEECH_KEY is not set; "
        "AZURE_SPEECH_REGION or AZURE_SPEECH_ENDPOINT is not set"
    )
    with pytest.raises(AzureSpeechSettingsError) as bad:
        speech_credentials(
            {
                "AZURE_SPEECH_KEY": KEY,
                "AZURE_SPEECH_REGION": "West Europe",
                "AZURE_SPEECH_ENDPOINT": "x",
            }
        )
    assert "AZURE_SPEECH_ENDPOINT must be" in str(bad.value)
    assert "AZURE_SPEECH_REGION must be" in str(bad.value)
    assert KEY not in str(bad.value)
    credentials = speech_credentials({"AZURE_SPEECH_KEY": KEY, "AZURE_SPEECH_REGION": "westeurope"})
    assert KEY not in repr(credentials)
    assert credentials.where == "region westeurope"


def test_pool_settings_from_the_environment() -> None:
    assert SynthesizerPoolSettings.from_env({}) == SynthesizerPoolSettings(
        2, 120.0, "connect", (16000,)
    )
    settings = SynthesizerPoolSettings.from_env(
        {
            "VOICEBOT_TTS_POOL_SIZE": "8",
            "VOICEBOT_TTS_POOL_MAX_AGE_SECS": "60",
            "VOICEBOT_TTS_POOL_WARMUP": "speak",
            "VOICEBOT_TTS_POOL_RATES": "16000,24000",
        }
    )
    assert settings == SynthesizerPoolSettings(8, 60.0, "speak", (16000, 24000))
    with pytest.raises(AzureSpeechSettingsError) as error:
        SynthesizerPoolSettings.from_env(
            {
                "VOICEBOT_TTS_POOL_SIZE": "many",
                "VOICEBOT_TTS_POOL_MAX_AGE_SECS": "0",
                "VOICEBOT_TTS_POOL_WARMUP": "yes",
                "VOICEBOT_TTS_POOL_RATES": "44100",
            }
        )
    message = str(error.value)
    for name in ("SIZE", "MAX_AGE_SECS", "WARMUP", "RATES"):
        assert f"VOICEBOT_TTS_POOL_{name}" in message


def test_yaml_params_are_checked_before_a_call(write_pipeline: WritePipeline) -> None:
    path = write_pipeline(
        """
name: bad
transport: acs
processors:
  - stt: {provider: azure, segmentation_silence_ms: 20, profanity: rude}
  - llm: {provider: fake}
  - tts: {provider: azure, rate: "fast'>", voice: "a voice", pich: high}
"""
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    text = str(error.value)
    for expected in (
        "stt.segmentation_silence_ms",
        "stt.profanity",
        "tts.rate",
        "tts.voice",
        "tts.pich: unknown key",
    ):
        assert expected in text
    assert AzureTTSParams(rate=1.1, style_degree=1.5).settings().rate == "1.1"
    with pytest.raises(ValidationError):
        AzureSTTParams(language="english please")


@pytest.fixture
def write_pipeline(pipeline_file: WritePipeline) -> WritePipeline:
    return pipeline_file


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 24000])
async def test_recognition_through_vad_and_azure_stt(
    rate: int, write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    with AzureSpeechFake(recognizer=ScriptedRecognizer([BALANCE]), final_delay_ms=100) as fake:
        speech_env(fake)
        async with CallHarness(stt_pipeline(write_pipeline, rate), virtual_clock=False) as call:
            spoke_at = call.now
            await call.speak(sample("balance"))
            await call.silence(800)
            final = await call.wait_for(TranscriptionFrame, timeout=5)
            stt = call.processor(WatchedAzureSTTService)
            assert stt.failure is None

    assert call.transcripts == [BALANCE]
    interims = [r for r in call.frames if isinstance(r.frame, InterimTranscriptionFrame)]
    assert interims and all(r.at < final.at for r in interims)
    # Interim words grow as the caller speaks, so a barge-in can act before the final.
    assert [r.frame.text for r in interims][:3] == ["What", "What is", "What is my"]
    speech_starts, speech_ends = speech_bounds(read_wav(sample("balance"), rate), rate)
    first_interim = interims[0].at - (spoke_at + speech_starts)
    assert first_interim < 1.0
    assert final.at - (spoke_at + speech_ends) < 1.0
    [turn] = fake.recognitions
    assert turn.mode == "conversation"
    assert turn.sample_rate == rate
    assert turn.segmentation_silence_ms == 300
    detection = turn.context["phraseDetection"]
    assert (detection["language"], detection["enrichment"]["profanity"]) == ("en-GB", "raw")
    assert fake.connections[0].headers["ocp-apim-subscription-key"] == KEY
    vad = [r.at for r in call.frames if isinstance(r.frame, VADUserStartedSpeakingFrame)]
    print(
        f"\n{rate} Hz: first interim {first_interim * 1000:.0f} ms after speech began"
        + (f" ({(interims[0].at - vad[0]) * 1000:+.0f} ms from the VAD's start)" if vad else "")
        + f"; final {(final.at - spoke_at - speech_ends) * 1000:.0f} ms after the end of speech"
    )


@pytest.mark.slow
@pytest.mark.parametrize("segmentation_ms", [300, 500])
async def test_end_of_speech_to_final_transcript(
    segmentation_ms: int,
    write_pipeline: WritePipeline,
    speech_env: Callable[[AzureSpeechFake], None],
) -> None:
    """Declared: ``segmentation_ms`` of silence ends a phrase; the service's final result takes
    150 ms more. Four turns of the ``balance`` sample."""
    pcm = read_wav(sample("balance"), 16000)
    _, speech_ends = speech_bounds(pcm, 16000)
    after_speech, after_vad = [], []
    path = stt_pipeline(write_pipeline, segmentation_silence_ms=segmentation_ms)
    with AzureSpeechFake(recognizer=ScriptedRecognizer([BALANCE] * 4), final_delay_ms=150) as fake:
        speech_env(fake)
        async with CallHarness(path, virtual_clock=False) as call:
            for _ in range(4):
                started = call.now
                await call.speak(pcm)
                await call.silence(segmentation_ms + 600)
                final = await call.wait_for(TranscriptionFrame, after=started, timeout=5)
                vad_stop = next(
                    r.at
                    for r in call.frames
                    if isinstance(r.frame, VADUserStoppedSpeakingFrame) and r.at > started
                )
                after_speech.append(final.at - (started + speech_ends))
                after_vad.append(final.at - vad_stop)
    assert call.transcripts == [BALANCE] * 4
    declared = (segmentation_ms + 150) / 1000
    median = statistics.median(after_speech)
    # The rest is the SDK (it sends audio in 100 ms chunks), the socket and the pipeline.
    assert declared <= median < declared + 0.25
    print(
        f"\nsegmentation {segmentation_ms} ms + 150 ms: end of speech -> final transcript "
        f"median {median * 1000:.0f} ms (min {min(after_speech) * 1000:.0f}, max "
        f"{max(after_speech) * 1000:.0f}); VAD stop -> final median "
        f"{statistics.median(after_vad) * 1000:.0f} ms"
    )


BOT_PIPELINE = """
name: azure-bot
transport: acs
audio: {in_rate: 16000, out_rate: 16000}
processors:
  - vad: {provider: silero, stop_secs: 0.2}
  - stt: {provider: azure, segmentation_silence_ms: 300}
  - llm: {provider: fake, ttft_ms: 0, replies: ["Your balance is 42 dollars."]}
  - tts: {provider: azure}
"""


@pytest.mark.slow
async def test_interim_transcripts_start_the_callers_turn(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    """pipecat starts the caller's turn (and interrupts the bot) on the first transcript,
    interim ones included: with Azure's interims that is as soon as the service hears words."""
    fake = AzureSpeechFake(
        recognizer=ScriptedRecognizer([BALANCE]), synthesizer=ToneSynthesizer(ms_per_char=5)
    )
    with fake:
        speech_env(fake)
        async with CallHarness(
            write_pipeline(BOT_PIPELINE, "bot.yaml"), virtual_clock=False
        ) as call:
            spoke_at = call.now
            await call.speak(sample("balance"))
            await call.silence(600)
            reply = await call.wait_for(OutputAudioRawFrame, timeout=5)

    def first(kind: type) -> float:
        return next(r.at for r in call.frames if isinstance(r.frame, kind))

    interim, final = first(InterimTranscriptionFrame), first(TranscriptionFrame)
    turn_start, interruption = first(UserStartedSpeakingFrame), first(InterruptionFrame)
    vad_start = first(VADUserStartedSpeakingFrame)
    assert turn_start <= min(interim, vad_start) + 0.05
    assert interruption <= min(interim, vad_start) + 0.05
    assert interruption < final - 0.3
    assert [s.text for s in fake.syntheses] == ["Your balance is 42 dollars."]
    assert reply.at > final
    speech_ends = spoke_at + speech_bounds(read_wav(sample("balance"), 16000), 16000)[1]
    print(
        f"\ncaller's turn (and barge-in) started {(final - turn_start) * 1000:.0f} ms before the "
        f"final transcript; first interim {(vad_start - interim) * 1000:+.0f} ms before the VAD; "
        f"end of speech -> final {(final - speech_ends) * 1000:.0f} ms -> LLM asked "
        f"{(first(LLMFullResponseStartFrame) - speech_ends) * 1000:.0f} ms -> first reply audio "
        f"{(reply.at - speech_ends) * 1000:.0f} ms"
    )


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_synthesis_has_the_declared_length_at_the_pipeline_rate(
    rate: int, write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    tone = ToneSynthesizer(ms_per_char=10)
    everything: list[str] = []
    sink = logger.add(lambda m: everything.append(str(m)), level="TRACE")
    try:
        with AzureSpeechFake(synthesizer=tone) as fake:
            speech_env(fake)
            async with CallHarness(tts_pipeline(write_pipeline, rate), virtual_clock=False) as call:
                await call.wait_for(TTSStoppedFrame, timeout=5)
                tts = call.processor(PooledAzureTTSService)
    finally:
        logger.remove(sink)

    assert everything and not any(KEY in line for line in everything)

    audio = call.of_type(TTSAudioRawFrame)
    assert {frame.sample_rate for frame in audio} == {rate}
    assert {frame.sample_rate for frame in call.of_type(OutputAudioRawFrame)} == {rate}
    assert len(call.audio_out) == tone.expected_bytes(GREETING, rate)
    [synthesis] = fake.syntheses
    assert synthesis.output_format == f"raw-{rate // 1000}khz-16bit-mono-pcm"
    assert synthesis.text == GREETING
    assert "<voice name='en-US-AvaNeural'>" in synthesis.ssml
    assert "<mstts:express-as style='cheerful'>" in synthesis.ssml
    assert "<prosody rate='1.1'>" in synthesis.ssml
    assert tts.failure is None


async def test_a_warmed_pool_serves_calls_and_takes_synthesizers_back(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    resources = SharedResources()
    try:
        with AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=5)) as fake:
            speech_env(fake)
            spec = load_pipeline(tts_pipeline(write_pipeline))
            await warm_up(spec, resources)
            status = speech_status(resources)
            assert status is not None
            pool = status["tts_pools"]["16000 Hz"]
            assert (pool["size"], pool["idle"], pool["in_use"], pool["last_error"]) == (
                2,
                2,
                0,
                None,
            )
            assert len(fake.connections) == 2  # opened at start-up, before any call

            for _ in range(3):
                async with CallHarness(spec, resources=resources, virtual_clock=False) as call:
                    await call.wait_for(TTSStoppedFrame, timeout=5)
                    tts = call.processor(PooledAzureTTSService)
                    assert tts.warm_start is True
                    in_call = speech_status(resources)
                    assert in_call is not None and in_call["tts_pools"]["16000 Hz"]["in_use"] == 1

            after = speech_status(resources)
            assert after is not None
            pool = after["tts_pools"]["16000 Hz"]
            assert (pool["idle"], pool["in_use"], pool["taken"], pool["discarded"]) == (2, 0, 3, 0)
            # Two connections opened at start-up, at most one more each time a call took one;
            # calls spoke over connections opened before them (warm_start), never their own.
            assert len(fake.syntheses) == 3
            assert len(fake.connections) <= 5
    finally:
        await resources.aclose()


@pytest.mark.slow
async def test_readiness_reports_an_unreachable_endpoint(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    resources = SharedResources()
    try:
        with AzureSpeechFake(mode="dead") as fake:
            speech_env(fake)
            url = fake.url
            for path in (
                stt_pipeline(write_pipeline, connect_timeout_ms=300),
                tts_pipeline(write_pipeline, first_chunk_timeout_ms=300),
            ):
                await warm_up(load_pipeline(path), resources, timeout_secs=10)
            status = speech_status(resources)
    finally:
        await resources.aclose()
    assert status is not None and status["status"] == "degraded"
    pool = status["tts_pools"]["16000 Hz"]
    assert (pool["status"], pool["idle"]) == ("empty", 0)
    assert "no connection to Azure Speech within 1 s" in pool["last_error"]
    assert status["stt"]["probes"][url] == {
        "status": "unreachable",
        "last_error": f"no connection to {url} within 0.3 s",
    }


async def test_a_broken_synthesizer_is_replaced(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    resources = SharedResources()
    try:
        # The fake closes connections idle for 0.5 s: pooled synthesizers lose theirs.
        with AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=5), idle_timeout=0.5) as fake:
            speech_env(fake)
            spec = load_pipeline(tts_pipeline(write_pipeline))
            await warm_up(spec, resources)
            speech = azure.azure_speech(resources)
            before = speech.status()["tts_pools"]["16000 Hz"]["created"]
            deadline = time.monotonic() + 5
            while True:
                status = speech.status()["tts_pools"]["16000 Hz"]
                # Dropped connections noticed (within a second) and replaced.
                if status["discarded"] >= 2 and status["created"] >= before + 2:
                    break
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            assert status["last_error"] is None
    finally:
        await resources.aclose()


async def test_tts_starts_on_the_first_sentence_of_the_reply(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    with AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=5)) as fake:
        speech_env(fake)
        # One word every 100 ms: the reply's second sentence takes over a second to arrive.
        path = tts_pipeline(write_pipeline, greeting="", interval=100)
        async with CallHarness(path, virtual_clock=False) as call:
            await call.say(BALANCE)
            first_audio = await call.wait_for(OutputAudioRawFrame, timeout=5)
            # The TTS holds the reply's end frame back until its audio is out.
            await call.wait_for(LLMFullResponseEndFrame, timeout=5)

    first, second = (
        "Your balance is 42 dollars.",
        REPLY.removeprefix("Your balance is 42 dollars. "),
    )
    assert [s.text for s in fake.syntheses] == [first, second]
    [llm_done] = [r.at for r in call.frames if isinstance(r.frame, LLMFullResponseEndFrame)]
    # The second sentence took 1.1 s to stream; the first was spoken long before its end.
    assert llm_done - first_audio.at > 0.5
    print(f"\nfirst audio {(llm_done - first_audio.at) * 1000:.0f} ms before the reply ended")


async def test_barge_in_stops_synthesis_and_keeps_the_connection(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    with AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=100), audio_chunk_ms=50) as fake:
        speech_env(fake)
        async with CallHarness(tts_pipeline(write_pipeline), virtual_clock=False) as call:
            await call.wait_for(TTSAudioRawFrame, timeout=5)
            await call.send(InterruptionFrame())
            await asyncio.sleep(0.2)
            tts = call.processor(PooledAzureTTSService)
            assert tts.synthesizer is not None and not tts.synthesizer.busy
            await call.send(TTSSpeakFrame("Go on."))
            await call.wait_for(lambda r: isinstance(r.frame, TTSStoppedFrame), timeout=5)

    assert [s.text for s in fake.syntheses] == [GREETING, "Go on."]
    assert tts.failure is None
    # The sentence after the barge-in went over the connection of the one it stopped.
    [connection] = [c for c in fake.connections if "ssml" in c.messages]
    assert connection.messages.count("ssml") == 2


# --------------------------------------------------------------------------------------------
# Broken endpoints and stuck SDK calls
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "bounds", "expected"),
    [
        # No WebSocket handshake: the SDK gives up on the first chunk after 1 s.
        ("dead", {"first_chunk_timeout_ms": 1000}, "timeout waiting for the first audio chunk"),
        # The service takes the SSML and says nothing; the SDK would wait 30 s: the stall
        # bound (1 s) ends it.
        (
            "mute",
            {"first_chunk_timeout_ms": 30000, "stall_timeout_ms": 1000},
            "no audio from Azure Speech for 1 s",
        ),
    ],
)
async def test_broken_tts_endpoint_ends_the_call_fast_with_a_reason(
    mode: str,
    bounds: dict[str, int],
    expected: str,
    write_pipeline: WritePipeline,
    speech_env: Callable[[AzureSpeechFake], None],
    logged: list[str],
) -> None:
    path = tts_pipeline(write_pipeline, **bounds)
    with AzureSpeechFake(mode=mode) as fake:  # type: ignore[arg-type]
        speech_env(fake)
        async with CallHarness(path, virtual_clock=False) as call:
            took = await ended(call, timeout=3)

    assert took < 3.0
    assert call.call.outcome == CallOutcome.ERROR
    assert call.call.error is not None and expected in call.call.error
    assert any("Azure speech synthesis failed, ending the call: " in m for m in logged)
    assert any(expected in m for m in logged)
    print(f"\n{mode} TTS endpoint: call ended after {took:.2f} s: {call.call.error}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("dead", "no connection to Azure Speech within 1 s"),
        ("refuse", "recognition canceled"),
        ("mute", "no answer from Azure Speech 1 s after the caller started speaking"),
    ],
)
async def test_broken_stt_endpoint_ends_the_call_fast_with_an_apology(
    mode: str,
    expected: str,
    write_pipeline: WritePipeline,
    speech_env: Callable[[AzureSpeechFake], None],
    logged: list[str],
) -> None:
    path = stt_pipeline(write_pipeline, connect_timeout_ms=1000, response_timeout_ms=1000)
    with AzureSpeechFake(mode=mode) as fake:  # type: ignore[arg-type]
        speech_env(fake)
        async with CallHarness(path, virtual_clock=False) as call:
            start = time.monotonic()
            speaking = asyncio.create_task(call.speak(sample("balance")))
            took = await ended(call, timeout=4)
            speaking.cancel()
            await asyncio.gather(speaking, return_exceptions=True)

    assert call.call.outcome == CallOutcome.ERROR
    assert call.call.error is not None and expected in call.call.error
    assert any(f"ending the call: {expected}" in m for m in logged)
    apologies = [f.text for f in call.of_type(TTSSpeakFrame)]
    assert apologies == [azure.DEFAULT_STT_APOLOGY]
    # mute: VAD start after ~0.3 s of speech + 1 s without an answer.
    assert time.monotonic() - start < 3.0
    print(f"\n{mode} STT endpoint: call ended after {took:.2f} s: {call.call.error}")


@pytest.mark.slow
async def test_ending_a_call_is_bounded_while_the_sdk_is_stuck(
    write_pipeline: WritePipeline, speech_env: Callable[[AzureSpeechFake], None]
) -> None:
    # The service takes the audio and the SSML and never answers: stopping recognition blocks
    # the SDK for stop_timeout_ms (10 s, its default), and synthesis waits 30 s for audio.
    stt_path = stt_pipeline(write_pipeline, response_timeout_ms=60000, stop_timeout_ms=10000)
    tts_path = tts_pipeline(write_pipeline, first_chunk_timeout_ms=30000, stall_timeout_ms=60000)
    for path, speak in ((stt_path, True), (tts_path, False)):
        with AzureSpeechFake(mode="mute") as fake:
            speech_env(fake)
            async with CallHarness(path, virtual_clock=False) as call:
                if speak:
                    await call.speak(sample("balance"))
                else:
                    await call.wait(0.5)
                assert call.call.ended_at is None
                start = time.monotonic()
                outcome = await call.close()
            took = time.monotonic() - start
            stuck = [t.name for t in threading.enumerate() if t.name.startswith("WatchedAzure")]
            assert outcome == CallOutcome.CANCELLED
            assert took < 2.0, f"{path.name}: ending took {took:.2f} s"
            if speak:
                assert stuck, "the SDK was expected to be still stopping"
            print(f"\n{path.stem}, SDK stuck: call ended {took:.2f} s after hang-up ({stuck})")
