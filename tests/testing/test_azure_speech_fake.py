"""AzureSpeechFake driven by the real Speech SDK (not patched), and by pipecat's Azure services.

The SDK blocks in ``.get()`` and calls back on its own threads: blocking calls run in
``asyncio.to_thread`` (the fake shares the test's event loop), and callbacks reach the test
through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.azure.stt import AzureSTTService
from pipecat.services.azure.tts import AzureTTSService
from pipecat.tests.utils import SleepFrame, run_test

from voicebot.testing.azure_speech import (
    AzureSpeechFake,
    CallableRecognizer,
    CallableSynthesizer,
    ScriptedRecognizer,
    ToneSynthesizer,
    ticks,
)
from voicebot.testing.tasks import no_leaked_tasks

RATE = 16000
TEXTS = ["Hello there.", "What is my balance?"]
SDK_TIMEOUT = 10.0  # seconds allowed for any one SDK call against the fake


def _pcm(*parts: tuple[str, float]) -> bytes:
    """PCM16 at 16 kHz from ("silence" | "noise" | "tone", seconds) parts."""
    rng = np.random.default_rng(7)
    chunks = []
    for kind, seconds in parts:
        n = round(seconds * RATE)
        if kind == "silence":
            chunks.append(np.zeros(n))
        elif kind == "noise":
            chunks.append(rng.standard_normal(n) * 5000)
        else:
            chunks.append(8000 * np.sin(2 * np.pi * 300 * np.arange(n) / RATE))
    return np.concatenate(chunks).astype("<i2").tobytes()


# Two bursts of 0.8 s, 1 s apart; the second ends 0.7 s before the stream does.
TWO_BURSTS = _pcm(
    ("silence", 0.25), ("noise", 0.8), ("silence", 1.0), ("tone", 0.8), ("silence", 0.7)
)
ONE_BURST = _pcm(("silence", 0.25), ("noise", 0.8), ("silence", 0.7))


@dataclass
class SdkEvent:
    kind: str
    at: float  # time.monotonic() on the SDK thread
    args: Any


class SdkEvents:
    """Hands SDK callbacks (SDK threads) to the test's event loop, stamped on arrival."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[SdkEvent] = asyncio.Queue()
        self.seen: list[SdkEvent] = []

    def handler(self, kind: str) -> Callable[[Any], None]:
        def on_event(args: Any) -> None:
            event = SdkEvent(kind, time.monotonic(), args)
            # RuntimeError: the test's loop is gone, nobody listens any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

        return on_event

    async def until(self, kind: str, timeout: float = SDK_TIMEOUT) -> list[SdkEvent]:
        """Every event up to and including the first of ``kind``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.queue.get()
                self.seen.append(event)
                if event.kind == kind:
                    return self.seen


async def _sdk(fn: Callable[[], Any], timeout: float = SDK_TIMEOUT) -> Any:
    """Run a blocking SDK call off the event loop that serves the fake."""
    return await asyncio.wait_for(asyncio.to_thread(fn), timeout)


async def _recognize_continuously(
    config: speechsdk.SpeechConfig, pcm: bytes
) -> tuple[list[SdkEvent], float]:
    """Push ``pcm`` in 100 ms writes, close the stream, collect events until the session stops.

    Returns the events and the time the first write started.
    """
    stream = speechsdk.audio.PushAudioInputStream(
        speechsdk.audio.AudioStreamFormat(samples_per_second=RATE)
    )
    recognizer = speechsdk.SpeechRecognizer(
        config, audio_config=speechsdk.audio.AudioConfig(stream=stream)
    )
    events = SdkEvents()
    for kind in ("recognizing", "recognized", "canceled", "session_stopped"):
        getattr(recognizer, kind).connect(events.handler(kind))
    try:
        await _sdk(lambda: recognizer.start_continuous_recognition_async().get())
        started = time.monotonic()
        for i in range(0, len(pcm), RATE // 10 * 2):
            stream.write(pcm[i : i + RATE // 10 * 2])
        stream.close()
        seen = await events.until("session_stopped")
    finally:
        await _sdk(lambda: recognizer.stop_continuous_recognition_async().get())
        for kind in ("recognizing", "recognized", "canceled", "session_stopped"):
            getattr(recognizer, kind).disconnect_all()
    return seen, started


def _recognize_once(
    config: speechsdk.SpeechConfig, pcm: bytes
) -> speechsdk.SpeechRecognitionResult:
    """Blocking: recognize-once over a closed push stream holding ``pcm``."""
    stream = speechsdk.audio.PushAudioInputStream(
        speechsdk.audio.AudioStreamFormat(samples_per_second=RATE)
    )
    recognizer = speechsdk.SpeechRecognizer(
        config, audio_config=speechsdk.audio.AudioConfig(stream=stream)
    )
    stream.write(pcm)
    stream.close()
    return recognizer.recognize_once_async().get()


@dataclass
class Spoken:
    reason: speechsdk.ResultReason
    audio: bytes
    first_chunk_s: float | None  # from the call to the first `synthesizing` event
    total_s: float
    error: str


def _speak(
    config: speechsdk.SpeechConfig,
    text: str,
    output_format: speechsdk.SpeechSynthesisOutputFormat | None = None,
    synthesizer: speechsdk.SpeechSynthesizer | None = None,
) -> Spoken:
    """Blocking: ``speak_text_async(text).get()`` with no audio output device."""
    if output_format is not None:
        config.set_speech_synthesis_output_format(output_format)
    synthesizer = synthesizer or speechsdk.SpeechSynthesizer(config, audio_config=None)
    chunks: list[float] = []
    synthesizer.synthesizing.connect(lambda _: chunks.append(time.monotonic()))
    start = time.monotonic()
    result = synthesizer.speak_text_async(text).get()
    total = time.monotonic() - start
    synthesizer.synthesizing.disconnect_all()
    error = ""
    if result.reason == speechsdk.ResultReason.Canceled:
        error = result.cancellation_details.error_details
    first = chunks[0] - start if chunks else None
    return Spoken(result.reason, bytes(result.audio_data), first, total, error)


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


async def test_continuous_recognition_gives_each_burst_its_scripted_text() -> None:
    async with (
        no_leaked_tasks(),
        AzureSpeechFake(recognizer=ScriptedRecognizer(TEXTS)) as fake,
    ):
        config = fake.speech_config()
        config.output_format = speechsdk.OutputFormat.Detailed
        events, started = await _recognize_continuously(config, TWO_BURSTS)

    recognized = [e.args.result for e in events if e.kind == "recognized"]
    assert [r.reason for r in recognized] == [speechsdk.ResultReason.RecognizedSpeech] * 2
    assert [r.text for r in recognized] == TEXTS
    assert [r.offset for r in recognized] == [ticks(0.25), ticks(2.05)]
    assert [r.duration for r in recognized] == [ticks(0.8), ticks(0.8)]
    hypotheses = [e.args.result.text for e in events if e.kind == "recognizing"]
    assert "Hello" in hypotheses and "What is my balance?" in hypotheses
    # The session ends because the stream did, not because of an error.
    canceled = [e.args for e in events if e.kind == "canceled"]
    assert [c.cancellation_details.reason for c in canceled] == [
        speechsdk.CancellationReason.EndOfStream
    ]
    assert events[-1].kind == "session_stopped"

    [turn] = fake.recognitions
    assert turn.mode == "conversation"
    assert turn.sample_rate == RATE
    assert turn.audio_bytes == len(TWO_BURSTS)
    assert turn.audio_ended
    assert turn.texts == TEXTS
    assert turn.context["phraseOutput"]["format"] == "Detailed"
    assert turn.phrases[0]["NBest"][0]["Lexical"] == "hello there"
    assert turn.phrases[-1] == {
        "RecognitionStatus": "EndOfDictation",
        "Offset": ticks(len(TWO_BURSTS) / 2 / RATE),
        "Duration": 0,
    }
    assert turn.turn_end_at is not None
    [connection] = fake.connections
    assert connection.path is not None and connection.path.startswith(
        "/speech/recognition/conversation/cognitiveservices/v1?"
    )
    assert connection.speech_config is not None
    assert connection.speech_config["context"]["audio"]["source"]["samplerate"] == str(RATE)
    first_hypothesis = next(e.at for e in events if e.kind == "recognizing") - started
    first_phrase = next(e.at for e in events if e.kind == "recognized") - started
    print(
        f"SDK: first hypothesis {first_hypothesis * 1000:.0f} ms, first phrase "
        f"{first_phrase * 1000:.0f} ms after the first write of 3.55 s of audio"
    )


async def test_segmentation_silence_asked_by_the_client_decides_utterances() -> None:
    # With 1.2 s of segmentation silence, the 1 s gap no longer splits the bursts.
    async with AzureSpeechFake(recognizer=ScriptedRecognizer(TEXTS)) as fake:
        config = fake.speech_config()
        config.set_property(speechsdk.PropertyId.Speech_SegmentationSilenceTimeoutMs, "1200")
        events, _ = await _recognize_continuously(config, TWO_BURSTS)

    recognized = [e.args.result for e in events if e.kind == "recognized"]
    assert [r.text for r in recognized] == ["Hello there."]
    assert recognized[0].duration == ticks(2.6)
    assert fake.recognitions[0].segmentation_silence_ms == 1200


async def test_recognize_once_returns_the_first_utterance_and_nomatch_for_silence() -> None:
    async with AzureSpeechFake(recognizer=ScriptedRecognizer(["Hello there."])) as fake:
        config = fake.speech_config()
        speech = await _sdk(lambda: _recognize_once(config, ONE_BURST))
        silence = await _sdk(lambda: _recognize_once(config, bytes(RATE * 2)))

    assert speech.reason == speechsdk.ResultReason.RecognizedSpeech
    assert (speech.text, speech.offset, speech.duration) == (
        "Hello there.",
        ticks(0.25),
        ticks(0.8),
    )
    assert silence.reason == speechsdk.ResultReason.NoMatch
    assert silence.no_match_details.reason == speechsdk.NoMatchReason.NotRecognized
    assert [turn.mode for turn in fake.recognitions] == ["interactive", "interactive"]
    assert [turn.texts for turn in fake.recognitions] == [["Hello there."], [""]]
    assert fake.connections[0].path is not None
    assert "/interactive/" in fake.connections[0].path


async def test_final_delay_holds_back_the_phrase() -> None:
    async with AzureSpeechFake(
        recognizer=ScriptedRecognizer(["Hello there."], delay_ms=100), final_delay_ms=300
    ) as fake:
        config = fake.speech_config()
        result = await _sdk(lambda: _recognize_once(config, ONE_BURST))

    assert result.text == "Hello there."
    [turn] = fake.recognitions
    assert turn.first_audio_at is not None and turn.first_phrase_at is not None
    # 300 ms declared by the fake plus 100 ms taken by the recognizer.
    assert turn.first_phrase_at - turn.first_audio_at >= 0.4


async def test_callable_recognizer_sees_the_utterance_audio() -> None:
    def transcribe(pcm: bytes, rate: int) -> str:
        return f"{len(pcm) // 2} samples at {rate} Hz"

    async with AzureSpeechFake(recognizer=CallableRecognizer(transcribe)) as fake:
        result = await _sdk(lambda: _recognize_once(fake.speech_config(), ONE_BURST))

    # The utterance runs from its first to its last voiced 10 ms frame: exactly the burst.
    assert result.text == "12800 samples at 16000 Hz"


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_format", "rate"),
    [
        (speechsdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm, 16000),
        (speechsdk.SpeechSynthesisOutputFormat.Raw24Khz16BitMonoPcm, 24000),
    ],
)
async def test_synthesis_length_is_the_declared_length(
    output_format: speechsdk.SpeechSynthesisOutputFormat, rate: int
) -> None:
    tone = ToneSynthesizer(ms_per_char=50)
    text = "Your balance is 42 dollars."
    async with no_leaked_tasks(), AzureSpeechFake(synthesizer=tone) as fake:
        config = fake.speech_config()
        spoken = await _sdk(lambda: _speak(config, text, output_format))

    assert spoken.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    assert len(spoken.audio) == tone.expected_bytes(text, rate) == 2 * rate * 27 * 50 // 1000
    assert spoken.audio == await tone.synthesize(text, rate)
    [synthesis] = fake.syntheses
    assert synthesis.output_format == f"raw-{rate // 1000}khz-16bit-mono-pcm"
    assert synthesis.sample_rate == rate
    assert synthesis.text == text
    assert f">{text}</voice>" in synthesis.ssml
    assert synthesis.audio_bytes == len(spoken.audio)
    assert fake.connections[0].path == "/cognitiveservices/websocket/v1"


async def test_riff_output_gets_its_header_from_the_sdk() -> None:
    tone = ToneSynthesizer(ms_per_char=40)
    async with AzureSpeechFake(synthesizer=tone) as fake:
        config = fake.speech_config()
        riff = speechsdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm
        spoken = await _sdk(lambda: _speak(config, "Hello.", riff))

    assert fake.syntheses[0].output_format == "raw-24khz-16bit-mono-pcm"
    with wave.open(io.BytesIO(spoken.audio)) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (24000, 2, 1)
        assert wav.readframes(wav.getnframes()) == await tone.synthesize("Hello.", 24000)


async def test_first_byte_delay_delays_the_first_chunk() -> None:
    async with AzureSpeechFake(synthesizer=ToneSynthesizer(ms_per_char=10)) as fake:
        config = fake.speech_config()
        synthesizer = speechsdk.SpeechSynthesizer(config, audio_config=None)
        prompt = await _sdk(lambda: _speak(config, "Hi.", synthesizer=synthesizer))
        fake.first_byte_delay_ms = 400
        delayed = await _sdk(lambda: _speak(config, "Hi.", synthesizer=synthesizer))
        await _sdk(lambda: synthesizer.stop_speaking_async().get())

    assert prompt.first_chunk_s is not None and prompt.first_chunk_s < 0.2
    # The service side is the contract: the first audio left 400 ms after the request.
    second = fake.syntheses[1]
    assert second.first_audio_at is not None
    assert second.first_audio_at - second.received_at >= 0.4
    # The SDK raises `synthesizing` on its own thread; on a busy machine, with the synthesizer
    # reused, it has delivered the delayed turn's audio only with the result (seen once in a full
    # run), so the client-side time is checked when the SDK reported it.
    if delayed.first_chunk_s is not None:
        assert 0.4 <= delayed.first_chunk_s < 1.0


async def test_callable_synthesizer_and_unsupported_format() -> None:
    def speak(text: str, rate: int) -> bytes:
        return bytes(2 * rate // 10)  # 100 ms of silence, whatever the text

    async with AzureSpeechFake(synthesizer=CallableSynthesizer(speak)) as fake:
        config = fake.speech_config()
        spoken = await _sdk(lambda: _speak(config, "Anything."))
        mulaw = speechsdk.SpeechSynthesisOutputFormat.Raw8Khz8BitMonoMULaw
        refused = await _sdk(lambda: _speak(config, "Anything.", mulaw))

    assert spoken.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    with wave.open(io.BytesIO(spoken.audio)) as wav:  # the SDK's default: 16 kHz RIFF
        assert (wav.getframerate(), wav.getnframes()) == (16000, 1600)
    assert refused.reason == speechsdk.ResultReason.Canceled
    assert "unsupported outputFormat 'raw-8khz-8bit-mono-mulaw'" in refused.error
    assert fake.errors == [
        "unsupported outputFormat 'raw-8khz-8bit-mono-mulaw': the fake speaks raw 16-bit PCM"
    ]


# --------------------------------------------------------------------------------------------
# Broken endpoints
# --------------------------------------------------------------------------------------------


async def test_dead_endpoint_synthesis_is_canceled_after_the_given_bound() -> None:
    # Defaults: 40 s for the first audio chunk, tried twice (80 s in all).
    async with AzureSpeechFake(mode="dead") as fake:
        config = fake.speech_config(give_up_after_ms=1000)
        spoken = await _sdk(lambda: _speak(config, "Hello."))

    assert spoken.reason == speechsdk.ResultReason.Canceled
    assert "timeout waiting for the first audio chunk" in spoken.error
    assert 1.0 <= spoken.total_s < 2.5
    # The fake never answered, but it read the upgrade request.
    [connection] = fake.connections
    assert connection.path == "/cognitiveservices/websocket/v1"
    assert connection.connection_id is not None and len(connection.connection_id) == 32


@pytest.mark.slow
async def test_dead_endpoint_recognize_once_is_canceled_after_the_given_bound() -> None:
    # Defaults: 60 s for the result plus 10 s for the stop.
    async with AzureSpeechFake(mode="dead") as fake:
        config = fake.speech_config(give_up_after_ms=1000)
        start = time.monotonic()
        result = await _sdk(lambda: _recognize_once(config, ONE_BURST))
        elapsed = time.monotonic() - start

    assert result.reason == speechsdk.ResultReason.Canceled
    details = result.cancellation_details
    assert details.reason == speechsdk.CancellationReason.Error
    assert "no recognition result received" in details.error_details
    assert 2.0 <= elapsed < 5.0  # 1 s for the result, 1 s for the stop, SDK polling


async def test_mute_endpoint_records_requests_it_never_answers() -> None:
    async with AzureSpeechFake(mode="mute") as fake:
        config = fake.speech_config(give_up_after_ms=500)
        spoken = await _sdk(lambda: _speak(config, "Hello."))

    assert spoken.reason == speechsdk.ResultReason.Canceled
    assert fake.connections[0].messages == ["speech.config", "synthesis.context", "ssml"]
    assert fake.syntheses == []


async def test_refusing_endpoint_fails_fast() -> None:
    # After a failed connection the SDK's recognizer destructor waits for its stop timeout
    # (default 10 s); give_up_after_ms=1000 makes that 1 s.
    async with AzureSpeechFake(mode="refuse") as fake:
        config = fake.speech_config(give_up_after_ms=1000)
        spoken = await _sdk(lambda: _speak(config, "Hello."))
        events, started = await _recognize_continuously(config, ONE_BURST)

    assert spoken.reason == speechsdk.ResultReason.Canceled
    assert "Connection failed" in spoken.error
    assert spoken.total_s < 1.0
    [canceled] = [e.args for e in events if e.kind == "canceled"]
    assert canceled.cancellation_details.reason == speechsdk.CancellationReason.Error
    assert "Connection failed" in canceled.cancellation_details.error_details
    print(
        f"refused: synthesis canceled after {spoken.total_s * 1000:.0f} ms, recognition "
        f"after {(events[-1].at - started) * 1000:.0f} ms, {len(fake.connections)} connections"
    )


def test_bad_settings_are_all_reported() -> None:
    with pytest.raises(ValueError) as error:
        AzureSpeechFake(mode="asleep", final_delay_ms=-1, idle_timeout=0)  # type: ignore[arg-type]
    message = str(error.value)
    assert "mode='asleep'" in message
    assert "final_delay_ms=-1" in message
    assert "idle_timeout=0" in message


# --------------------------------------------------------------------------------------------
# pipecat's Azure services
# --------------------------------------------------------------------------------------------


async def test_pipecat_tts_service_speaks_through_the_fake() -> None:
    tone = ToneSynthesizer(ms_per_char=20)
    text = "Your balance is 42 dollars."
    async with AzureSpeechFake(synthesizer=tone, first_byte_delay_ms=50) as fake:
        tts = AzureTTSService(api_key="fake", private_endpoint=fake.tts_endpoint, sample_rate=24000)
        down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(text), SleepFrame(0.3)])

    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert sum(len(f.audio) for f in audio) == tone.expected_bytes(text, 24000)
    assert {f.sample_rate for f in audio} == {24000}
    kinds = [type(f) for f in down]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame)
    assert kinds.index(TTSStoppedFrame) > max(
        i for i, k in enumerate(kinds) if k is TTSAudioRawFrame
    )
    # Word boundaries the fake sent become pipecat's word-timed text frames.
    assert [f.text for f in down if isinstance(f, TTSTextFrame)] == [
        "Your",
        "balance",
        "is",
        "42",
        "dollars.",
    ]
    [synthesis] = fake.syntheses
    assert synthesis.text == text
    assert synthesis.output_format == "raw-24khz-16bit-mono-pcm"
    assert fake.connections[0].headers["ocp-apim-subscription-key"] == "fake"


async def test_pipecat_stt_service_transcribes_through_the_fake() -> None:
    # The fake runs in its own thread: pipecat stops its recognizer on the event loop, and the
    # SDK's destructor blocks there until the service ends the turn.
    audio = TWO_BURSTS + bytes(RATE // 5)
    frames = [InputAudioRawFrame(audio[i : i + 640], RATE, 1) for i in range(0, len(audio), 640)]
    with AzureSpeechFake(recognizer=ScriptedRecognizer(TEXTS)) as fake:
        stt = AzureSTTService(api_key="fake", private_endpoint=fake.stt_endpoint, sample_rate=RATE)
        start = time.monotonic()
        down, _ = await run_test(stt, frames_to_send=[*frames, SleepFrame(0.5)])
        elapsed = time.monotonic() - start

    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == TEXTS
    assert any(isinstance(f, InterimTranscriptionFrame) for f in down)
    [turn] = fake.recognitions
    assert turn.mode == "conversation"
    # pipecat stops recognition before closing its stream: the SDK drops the last part of a
    # 100 ms chunk it had not sent yet.
    assert len(audio) - 3200 < turn.audio_bytes <= len(audio)
    assert elapsed < 3.0
