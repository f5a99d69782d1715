"""``provider: azure`` — Azure AI Speech: streaming recognition and synthesis for phone calls.

::

    - stt:
        provider: azure
        language: en-US
        segmentation_silence_ms: 300       # silence that ends a phrase (Azure: 100-5000, 500)
        profanity: raw                     # raw | masked | removed
    - tts:
        provider: azure
        voice: en-US-JennyNeural
        style: customerservice             # SSML mstts:express-as, if the voice has it
        rate: "+5%"                        # SSML prosody: 1.1, +5%, slow, ...

The resource comes from the environment, never from YAML: ``AZURE_SPEECH_KEY`` and either
``AZURE_SPEECH_REGION`` (``westeurope``) or ``AZURE_SPEECH_ENDPOINT`` (a resource endpoint such
as ``https://<name>.cognitiveservices.azure.com``, e.g. behind a private endpoint, or a
``wss://``/``ws://`` URL). A missing setting is an error that names every missing variable; the
key never appears in logs or errors.

Both services are pipecat's (``AzureSTTService``, ``AzureTTSService``); what voicebot adds:

* **Synthesis from a pre-warmed pool.** Each process keeps ``VOICEBOT_TTS_POOL_SIZE``
  synthesizers per output rate with their WebSocket already open; a call takes one when its
  pipeline starts and gives it back when it ends, so its first sentence does not pay for a
  connection. Broken ones (connection dropped, synthesis failed or stuck) and ones older than
  ``VOICEBOT_TTS_POOL_MAX_AGE_SECS`` are closed and replaced in the background. See
  :class:`SynthesizerPoolSettings` for all pool settings.
* **Output at the pipeline's rate.** Synthesis asks Azure for raw 16-bit PCM at ``audio.out_rate``
  (8, 16 or 24 kHz), so audio is never resampled on the way to the caller.
* **Ready recognizer configs.** The ``SpeechConfig`` of each recognition setup is built once per
  process (at start-up by the ``warm`` hook, which also checks the endpoint answers) and shared.
* **A bound on every SDK wait.** Synthesis gives up when the first audio of a sentence takes
  longer than ``first_chunk_timeout_ms`` (the SDK's ``SpeechSynthesis_FirstChunkTimeoutMs``, with
  ``max_retries`` retries) or the next chunk longer than ``stall_timeout_ms``. Recognition has a
  watchdog: no connection within ``connect_timeout_ms``, or no word from the service within
  ``response_timeout_ms`` of the caller starting to speak, fails the call. Stopping runs on a
  daemon thread, awaited at most 1 s when a call ends (:data:`STOP_WAIT_SECS`) and
  ``stop_timeout_ms`` on barge-in; a synthesizer in use when its call ends is not waited for at
  all. pipecat's services alone would block the event loop for 10 s or more on a dead endpoint.
* **Failing fast.** A failure is logged with its reason and ends the call (pipecat's
  unusable-processor policy): recognition first has ``apology`` spoken; synthesis, being what
  failed, cannot.

The SDK properties used for these bounds (``SpeechSynthesis_FirstChunkTimeoutMs``,
``SpeechSynthesis_MaxRetryTimes``, ``SpeechSynthesis_KeepConnectionAfterStopping``,
``SPEECH-StopRecognitionTimeoutInSeconds``, ``SPEECH-Error-RetryConnectionFailures``) are
undocumented SDK internals, verified against SDK 1.53 with
:class:`voicebot.testing.azure_speech.AzureSpeechFake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import azure.cognitiveservices.speech as speechsdk
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSSpeakFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.azure.stt import AzureSTTService
from pipecat.services.azure.tts import (
    AzureTTSService,
    AzureTTSSettings,
    sample_rate_to_output_format,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from voicebot.build.context import BuildContext
from voicebot.build.registry import provider
from voicebot.services import kinds
from voicebot.services.pools import Pooled, WarmPool, call_in_thread
from voicebot.services.resources import SharedResources

__all__ = [
    "ENV_ENDPOINT",
    "ENV_KEY",
    "ENV_REGION",
    "AzureSTTParams",
    "AzureSpeech",
    "AzureSpeechSettingsError",
    "AzureTTSParams",
    "PooledAzureTTSService",
    "PooledSynthesizer",
    "SpeechCredentials",
    "SynthesizerPoolSettings",
    "WatchedAzureSTTService",
    "azure_speech",
    "azure_stt",
    "azure_tts",
    "kinds",
    "speech_credentials",
    "speech_status",
]

ENV_KEY = "AZURE_SPEECH_KEY"
ENV_REGION = "AZURE_SPEECH_REGION"
ENV_ENDPOINT = "AZURE_SPEECH_ENDPOINT"

#: Rates Azure synthesizes raw 16-bit mono PCM at that a pipeline may ask for.
OUTPUT_RATES = (8000, 16000, 24000)
#: What the caller hears when recognition fails and the call is ended.
DEFAULT_STT_APOLOGY = "Sorry, I can't hear you right now. Please call again later."
#: Text a pooled synthesizer speaks once when ``VOICEBOT_TTS_POOL_WARMUP=speak``.
WARMUP_TEXT = "Hello."
#: Longest wait, in seconds, for recognition to stop when a call ends; past it the SDK finishes
#: stopping on a daemon thread of its own.
STOP_WAIT_SECS = 1.0
#: The shared-resource key of the process's :class:`AzureSpeech`.
RESOURCE_KEY = "azure-speech"

# Undocumented SDK properties (verified against SDK 1.53; see the module docstring).
_FIRST_CHUNK_TIMEOUT = "SpeechSynthesis_FirstChunkTimeoutMs"
_MAX_RETRIES = "SpeechSynthesis_MaxRetryTimes"
_KEEP_CONNECTION = "SpeechSynthesis_KeepConnectionAfterStopping"
_STOP_TIMEOUT = "SPEECH-StopRecognitionTimeoutInSeconds"
_RETRY_CONNECT = "SPEECH-Error-RetryConnectionFailures"


# --------------------------------------------------------------------------------------------
# Settings from the environment
# --------------------------------------------------------------------------------------------


class AzureSpeechSettingsError(ValueError):
    """Azure Speech settings are missing or malformed; the message names every variable."""


@dataclass(frozen=True)
class SpeechCredentials:
    """Where the Speech resource is and its key (``repr`` never shows the key)."""

    key: SecretStr
    region: str = ""
    endpoint: str = ""

    @property
    def digest(self) -> str:
        """Identifies the resource and key in shared-resource keys without revealing the key."""
        raw = f"{self.region}|{self.endpoint}|{self.key.get_secret_value()}"
        return hashlib.sha256(raw.encode()).hexdigest()[:12]

    @property
    def where(self) -> str:
        """The endpoint or region, for logs."""
        return self.endpoint or f"region {self.region}"

    def speech_config(self) -> speechsdk.SpeechConfig:
        """A fresh ``SpeechConfig`` for the resource (the endpoint wins over the region)."""
        key = self.key.get_secret_value()
        if self.endpoint:
            return speechsdk.SpeechConfig(subscription=key, endpoint=self.endpoint)
        return speechsdk.SpeechConfig(subscription=key, region=self.region)


def speech_credentials(env: Mapping[str, str] | None = None) -> SpeechCredentials:
    """The Speech resource from ``env`` (default ``os.environ``).

    Raises:
        AzureSpeechSettingsError: Naming every missing or malformed variable at once.
    """
    env = os.environ if env is None else env
    key = env.get(ENV_KEY, "").strip()
    region = env.get(ENV_REGION, "").strip().lower()
    endpoint = env.get(ENV_ENDPOINT, "").strip()
    problems = []
    if not key:
        problems.append(f"{ENV_KEY} is not set")
    if not region and not endpoint:
        problems.append(f"{ENV_REGION} or {ENV_ENDPOINT} is not set")
    if endpoint and not re.match(r"^(https?|wss?)://[^/\s]+", endpoint):
        problems.append(
            f"{ENV_ENDPOINT} must be an http(s):// or ws(s):// URL, "
            f"e.g. https://<name>.cognitiveservices.azure.com (got {endpoint!r})"
        )
    if region and not re.fullmatch(r"[a-z0-9]+", region):
        problems.append(f"{ENV_REGION} must be a region name such as westeurope (got {region!r})")
    if problems:
        raise AzureSpeechSettingsError("Azure Speech settings: " + "; ".join(problems))
    return SpeechCredentials(SecretStr(key), region=region, endpoint=endpoint)


def _environment(context: BuildContext | None) -> Mapping[str, str]:
    """The process environment overlaid with the one the pipeline was loaded with."""
    if context is None or not context.env:
        return os.environ
    return {**os.environ, **context.env}


@dataclass(frozen=True)
class SynthesizerPoolSettings:
    """The synthesizer pools of a process, from ``VOICEBOT_TTS_POOL_*`` variables.

    Attributes:
        size: ``VOICEBOT_TTS_POOL_SIZE`` (2): idle synthesizers kept connected per output rate;
            0 turns pooling off (each call connects on its own).
        max_age_secs: ``VOICEBOT_TTS_POOL_MAX_AGE_SECS`` (120): a synthesizer older than this is
            not handed out or taken back but replaced, before the service drops its idle
            connection.
        warmup: ``VOICEBOT_TTS_POOL_WARMUP`` (``connect``): how a pooled synthesizer is made
            ready — ``connect`` opens its connection; ``speak`` also synthesizes a short text
            once (the first request on a connection can be slower); ``off`` fills no pool at
            start-up (calls fill it as they start).
        rates: ``VOICEBOT_TTS_POOL_RATES`` (``16000``): output rates (Hz, comma-separated) whose
            pools are filled at start-up; a pool for another rate fills when its first call
            starts.
    """

    size: int = 2
    max_age_secs: float = 120.0
    warmup: Literal["connect", "speak", "off"] = "connect"
    rates: tuple[int, ...] = (16000,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SynthesizerPoolSettings:
        """Read the variables; raises AzureSpeechSettingsError naming every bad one."""
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, Any] = {}

        def read(name: str, field: str, parse: Callable[[str], Any], rule: str) -> None:
            raw = env.get(name, "").strip()
            if not raw:
                return
            try:
                values[field] = parse(raw)
            except ValueError:
                problems.append(f"{name} must be {rule} (got {raw!r})")

        def size(raw: str) -> int:
            value = int(raw)
            if not 0 <= value <= 64:
                raise ValueError
            return value

        def age(raw: str) -> float:
            value = float(raw)
            if not 1 <= value <= 3600:
                raise ValueError
            return value

        def warmup(raw: str) -> str:
            if raw not in ("connect", "speak", "off"):
                raise ValueError
            return raw

        def rates(raw: str) -> tuple[int, ...]:
            parsed = tuple(int(part) for part in raw.split(",") if part.strip())
            if not parsed or any(rate not in OUTPUT_RATES for rate in parsed):
                raise ValueError
            return parsed

        read("VOICEBOT_TTS_POOL_SIZE", "size", size, "a whole number from 0 to 64")
        read("VOICEBOT_TTS_POOL_MAX_AGE_SECS", "max_age_secs", age, "seconds from 1 to 3600")
        read("VOICEBOT_TTS_POOL_WARMUP", "warmup", warmup, "connect, speak or off")
        rule = "comma-separated rates among " + ", ".join(map(str, OUTPUT_RATES))
        read("VOICEBOT_TTS_POOL_RATES", "rates", rates, rule)
        if problems:
            raise AzureSpeechSettingsError("synthesizer pool settings: " + "; ".join(problems))
        return cls(**values)


# --------------------------------------------------------------------------------------------
# YAML params
# --------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.-]*$")
_PROSODY = re.compile(
    r"^([+-]?\d+(\.\d+)?(%|Hz|st)?|x-slow|slow|medium|fast|x-fast|"
    r"x-low|low|high|x-high|silent|x-soft|soft|loud|x-loud|default)$"
)


def _check_locale(value: str) -> str:
    if not re.fullmatch(r"[a-zA-Z]{2,3}(-[A-Za-z0-9]{2,8})*", value):
        raise ValueError("expected a BCP-47 locale such as en-US")
    return value


class AzureSTTParams(BaseModel):
    """Continuous recognition with interim results, for one call."""

    model_config = ConfigDict(extra="forbid")

    language: str = "en-US"
    """BCP-47 locale the caller speaks, e.g. ``en-US``, ``de-DE``."""
    segmentation_silence_ms: int | None = Field(default=None, ge=100, le=5000)
    """Silence that ends a phrase (a final transcript), in ms; None: Azure's 500."""
    profanity: Literal["raw", "masked", "removed"] | None = None
    """How profanity appears in transcripts; None: Azure's ``masked``."""
    endpoint_id: str | None = None
    """A Custom Speech model's endpoint id."""
    connect_timeout_ms: int = Field(default=3000, ge=100, le=60000)
    """Longest time without a connection to the service (at start or after a drop), in ms."""
    response_timeout_ms: int = Field(default=5000, ge=100, le=60000)
    """Longest silence from the service after the caller starts speaking, in ms."""
    stop_timeout_ms: int = Field(default=1000, ge=1000, le=10000)
    """How long the SDK waits for the service to end recognition, in ms (whole seconds; the
    SDK's default is 10 s). The call itself never waits more than ``STOP_WAIT_SECS``."""
    apology: str = DEFAULT_STT_APOLOGY
    """Spoken (by the pipeline's TTS) when recognition fails, before the call ends."""

    @field_validator("language")
    @classmethod
    def _locale(cls, value: str) -> str:
        return _check_locale(value)


class AzureTTSParams(BaseModel):
    """Streaming synthesis with a voice, style and prosody, for one call."""

    model_config = ConfigDict(extra="forbid")

    voice: str = "en-US-JennyNeural"
    """An Azure voice name, e.g. ``en-US-AvaMultilingualNeural``."""
    language: str = "en-US"
    """``xml:lang`` of the SSML."""
    style: str | None = None
    """Speaking style (``mstts:express-as``), e.g. ``customerservice``, ``cheerful``."""
    style_degree: float | None = Field(default=None, ge=0.01, le=2.0)
    role: str | None = None
    """Role-play (``mstts:express-as role``), e.g. ``YoungAdultFemale``."""
    rate: str | float | None = None
    """Speaking rate (SSML ``prosody rate``): ``1.1``, ``+10%``, ``slow``, ..."""
    pitch: str | None = None
    volume: str | None = None
    first_chunk_timeout_ms: int = Field(default=3000, ge=100, le=60000)
    """Longest wait for a sentence's first audio, in ms (the SDK then cancels it)."""
    max_retries: int = Field(default=0, ge=0, le=3)
    """Times the SDK retries a sentence whose audio never started."""
    stall_timeout_ms: int = Field(default=5000, ge=100, le=60000)
    """Longest wait for the next piece of a sentence's audio, in ms."""
    stop_timeout_ms: int = Field(default=1000, ge=100, le=2000)
    """Longest wait for a synthesis to stop on barge-in, in ms."""

    @field_validator("voice", "style", "role")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("expected a name of letters, digits, '-', '_', '.' or ':'")
        return value

    @field_validator("rate", "pitch", "volume")
    @classmethod
    def _prosody(cls, value: str | float | None) -> str | None:
        if value is None:
            return None
        text = format(value, "g") if isinstance(value, float | int) else value.strip()
        if not _PROSODY.match(text):
            raise ValueError("expected a number, a percentage such as +10%, or a word like slow")
        return text

    @field_validator("language")
    @classmethod
    def _locale(cls, value: str) -> str:
        return _check_locale(value)

    def settings(self) -> AzureTTSSettings:
        """pipecat's SSML settings for these params."""
        return AzureTTSSettings(
            voice=self.voice,
            language=self.language,
            style=self.style,
            style_degree=None if self.style_degree is None else format(self.style_degree, "g"),
            role=self.role,
            rate=None if self.rate is None else str(self.rate),
            pitch=self.pitch,
            volume=self.volume,
        )


# --------------------------------------------------------------------------------------------
# Synthesizers
# --------------------------------------------------------------------------------------------


def _synthesis_config(
    credentials: SpeechCredentials, rate: int, params: AzureTTSParams
) -> speechsdk.SpeechConfig:
    config = credentials.speech_config()
    config.set_speech_synthesis_output_format(sample_rate_to_output_format(rate))
    # pipecat's AzureTTSService asks for the WebSocket synthesis connection the same way.
    config.set_service_property(
        "synthesizer.synthesis.connection.synthesisConnectionImpl",
        "websocket",
        speechsdk.ServicePropertyChannel.UriQueryParameter,
    )
    config.set_property_by_name(_FIRST_CHUNK_TIMEOUT, str(params.first_chunk_timeout_ms))
    config.set_property_by_name(_MAX_RETRIES, str(params.max_retries))
    # Barge-in stops a synthesis; keep the connection for the next sentence.
    config.set_property_by_name(_KEEP_CONNECTION, "true")
    return config


class PooledSynthesizer:
    """A ``SpeechSynthesizer`` with its connection, lent to one call at a time.

    The SDK's events are connected once, here, and forwarded to the :attr:`listener` of the
    moment (the call's :class:`PooledAzureTTSService`, held weakly), so lending it out never
    re-wires SDK callbacks and a late event of a finished call reaches nobody. The SDK calls
    back on its own threads.
    """

    def __init__(self, config: speechsdk.SpeechConfig, name: str = "azure-tts") -> None:
        self.name = name
        self.synthesizer = speechsdk.SpeechSynthesizer(speech_config=config, audio_config=None)
        self.connection = speechsdk.Connection.from_speech_synthesizer(self.synthesizer)
        self.broken: str | None = None
        """Why it must not be used again, or None."""
        self._listener: weakref.ref[Any] | None = None
        self._busy = 0  # syntheses started and not yet completed or canceled
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.connection.connected.connect(lambda _evt: self._connected.set())
        self.connection.disconnected.connect(lambda _evt: self._connected.clear())
        for signal, method, ends in (
            (self.synthesizer.synthesizing, "_handle_synthesizing", False),
            (self.synthesizer.synthesis_word_boundary, "_handle_word_boundary", False),
            (self.synthesizer.synthesis_completed, "_handle_completed", True),
            (self.synthesizer.synthesis_canceled, "_handle_canceled", True),
        ):
            signal.connect(self._forwarder(method, ends))

    @property
    def listener(self) -> Any:
        """The call using it, or None when idle."""
        return None if self._listener is None else self._listener()

    @listener.setter
    def listener(self, value: Any) -> None:
        self._listener = None if value is None else weakref.ref(value)

    def _forwarder(self, method: str, ends: bool) -> Callable[[Any], None]:
        def forward(evt: Any) -> None:
            if ends:
                with self._lock:
                    self._busy = max(0, self._busy - 1)
            listener = self.listener
            if listener is not None:
                getattr(listener, method)(evt)

        return forward

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def busy(self) -> bool:
        """Whether a synthesis is in flight."""
        return self._busy > 0

    def healthy(self) -> bool:
        """Ready for a new call: connected, idle and never broken."""
        return self.broken is None and self.connected and not self.busy

    def open(self, wait_secs: float | None = None) -> None:
        """Open the connection; with ``wait_secs``, block until it is up.

        Raises:
            ConnectionError: It did not connect within ``wait_secs``.
        """
        self.connection.open(True)
        if wait_secs is not None and not self._connected.wait(wait_secs):
            raise ConnectionError(f"no connection to Azure Speech within {wait_secs:g} s")

    def speak_ssml_async(self, ssml: str) -> Any:
        """Start synthesizing ``ssml``; audio arrives through the events (as the SDK's)."""
        with self._lock:
            self._busy += 1
        return self.synthesizer.speak_ssml_async(ssml)

    def stop_speaking_async(self) -> Any:
        """Stop the synthesis in flight (as the SDK's)."""
        return self.synthesizer.stop_speaking_async()

    def warm_up(self, ssml: str) -> None:
        """Blocking: synthesize ``ssml`` once and throw the audio away (bounded by the SDK's
        first-chunk timeout)."""
        result = self.speak_ssml_async(ssml).get()
        if result.reason != speechsdk.ResultReason.SynthesizingAudioCompleted:
            details = result.cancellation_details
            raise ConnectionError(f"warm-up synthesis failed: {details.error_details}")

    def stop(self) -> None:
        """Blocking: stop the synthesis in flight, if any."""
        if self.busy:
            self.synthesizer.stop_speaking_async().get()

    def close(self) -> None:
        """Blocking: stop, disconnect every event and close the connection."""
        self.listener = None
        try:
            self.stop()
        finally:
            for signal in (
                self.synthesizer.synthesizing,
                self.synthesizer.synthesis_word_boundary,
                self.synthesizer.synthesis_completed,
                self.synthesizer.synthesis_canceled,
                self.connection.connected,
                self.connection.disconnected,
            ):
                signal.disconnect_all()
            self.connection.close()


class PooledAzureTTSService(AzureTTSService):
    """pipecat's ``AzureTTSService`` on a synthesizer lent by a :class:`WarmPool`.

    ``setup`` takes a connected synthesizer from ``pool`` or, if none is idle, makes one with
    ``make_synthesizer`` (it connects with the first sentence); ``cleanup`` gives it back, or has it
    closed if the call broke it or left a synthesis in flight. In between it works as pipecat's
    service does: one ``speak_ssml_async`` per sentence, audio and word boundaries streamed back
    as ``TTSAudioRawFrame``/``TTSTextFrame``, at the synthesizer's rate (the pool's).

    Differences, all about bounds: waiting for the next audio chunk gives up after
    ``stall_timeout_secs``; stopping a synthesis on barge-in waits at most
    ``stop_timeout_secs`` (a synthesizer that does not stop is replaced); a synthesis that fails
    (canceled by the SDK, stalled) is logged with its reason and makes the service unusable,
    which ends the call.
    """

    def __init__(
        self,
        *,
        pool: WarmPool[PooledSynthesizer],
        make_synthesizer: Callable[[], PooledSynthesizer],
        stall_timeout_secs: float = 5.0,
        stop_timeout_secs: float = 1.0,
        **kwargs: Any,
    ) -> None:
        # The synthesizer comes from the pool: pipecat's own SpeechConfig is never built, so it
        # gets no key (the endpoint only satisfies its constructor's check).
        super().__init__(api_key="", private_endpoint="pooled", **kwargs)
        self._pool = pool
        self._make_synthesizer = make_synthesizer
        self._stall_timeout = stall_timeout_secs
        self._stop_timeout = stop_timeout_secs
        self._lease: Pooled[PooledSynthesizer] | None = None
        self._lease_finalizer: weakref.finalize[Any, Any] | None = None
        self._failure: str | None = None
        self._failure_reported = False
        self.warm_start: bool | None = None
        """Whether this call's synthesizer came connected from the pool (None before setup)."""
        self._audio_queue = _StallBoundedQueue(self)

    @property
    def synthesizer(self) -> PooledSynthesizer | None:
        """The synthesizer this call holds (between setup and cleanup)."""
        return None if self._lease is None else self._lease.value

    @property
    def failure(self) -> str | None:
        """Why synthesis failed, or None."""
        return self._failure

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        # Skip AzureTTSService.setup, which builds a SpeechConfig and synthesizer per call.
        await super(AzureTTSService, self).setup(setup)
        self._take_synthesizer()

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self._give_back()

    def _take_synthesizer(self) -> None:
        lease = self._pool.take()
        self.warm_start = lease is not None
        if lease is None:
            # Connecting it now would race the first sentence, which opens a connection of its
            # own if this one is not up yet: let that sentence connect it.
            lease = self._pool.adopt(self._make_synthesizer())
        lease.value.listener = self
        self._lease = lease
        self._speech_synthesizer = lease.value  # type: ignore[assignment]
        # Should the call end without cleanup (its task killed), the lease still goes back.
        self._lease_finalizer = weakref.finalize(
            self, self._pool.release, lease, reusable=False, reason="call ended without cleanup"
        )

    def _give_back(self, *, broken: str | None = None) -> None:
        lease, self._lease = self._lease, None
        self._speech_synthesizer = None
        if lease is None:
            return
        if self._lease_finalizer is not None:
            self._lease_finalizer.detach()
            self._lease_finalizer = None
        item = lease.value
        item.listener = None
        if broken is not None:
            item.broken = broken
        reason = item.broken or self._failure
        if reason is None and item.busy:
            reason = "synthesis still in flight"
        self._pool.release(lease, reusable=reason is None, reason=reason or "")

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        if self._failure is not None:
            return
        async for frame in super().run_tts(text, context_id):
            yield frame
        if self._failure is not None and self.audio_context_available(context_id):
            # No audio will come: end the context now rather than after pipecat's idle timeout
            # (3 s), so that the call ends promptly.
            await self.remove_audio_context(context_id)

    async def _handle_interruption(
        self, frame: InterruptionFrame, direction: FrameDirection
    ) -> None:
        item = self.synthesizer
        if item is not None and item.busy:
            try:
                await call_in_thread(item.stop, timeout=self._stop_timeout, name=f"{self}-stop")
            except Exception as exc:
                logger.warning(f"{self}: a synthesis did not stop ({exc!r}); replacing it")
                self._give_back(broken=f"stop failed: {exc!r}")
                self._take_synthesizer()
        # pipecat's handler would stop the synthesizer again, unbounded: hide it meanwhile.
        synthesizer, self._speech_synthesizer = self._speech_synthesizer, None
        try:
            await super()._handle_interruption(frame, direction)
        finally:
            if self._lease is not None:
                self._speech_synthesizer = synthesizer

    def _handle_canceled(self, evt: Any) -> None:
        details = evt.result.cancellation_details
        if details.reason != speechsdk.CancellationReason.CancelledByUser:
            self._note_failure(f"synthesis canceled: {details.error_details or details.reason}")
        super()._handle_canceled(evt)

    def _note_failure(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            item = self.synthesizer
            if item is not None:
                item.broken = reason

    async def push_error_frame(
        self, error: ErrorFrame, force_treat_as_permanent: bool = False
    ) -> None:
        if self._failure is not None and not force_treat_as_permanent:
            if not self._failure_reported:
                self._failure_reported = True
                logger.error(
                    f"{self}: Azure speech synthesis failed, ending the call: {self._failure}"
                )
            force_treat_as_permanent = True
        await super().push_error_frame(error, force_treat_as_permanent=force_treat_as_permanent)


class _StallBoundedQueue(asyncio.Queue[Any]):
    """pipecat's audio queue for ``run_tts``, whose ``get`` gives up after the stall timeout.

    Giving up returns an exception, which ``run_tts`` turns into an ``ErrorFrame`` and the end
    of that sentence, as it does for a synthesis the SDK canceled.
    """

    def __init__(self, service: PooledAzureTTSService) -> None:
        super().__init__()
        self._service = weakref.ref(service)

    async def get(self) -> Any:
        service = self._service()
        timeout = service._stall_timeout if service is not None else None
        try:
            return await asyncio.wait_for(super().get(), timeout)
        except TimeoutError:
            reason = f"no audio from Azure Speech for {timeout:g} s"
            if service is not None:
                service._note_failure(reason)
            return TimeoutError(reason)


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


def _recognition_config(
    credentials: SpeechCredentials, params: AzureSTTParams
) -> speechsdk.SpeechConfig:
    config = credentials.speech_config()
    _apply_recognition_bounds(config, params)
    config.speech_recognition_language = params.language
    if params.endpoint_id:
        config.endpoint_id = params.endpoint_id
    if params.profanity is not None:
        config.set_profanity(
            {
                "raw": speechsdk.ProfanityOption.Raw,
                "masked": speechsdk.ProfanityOption.Masked,
                "removed": speechsdk.ProfanityOption.Removed,
            }[params.profanity]
        )
    if params.segmentation_silence_ms is not None:
        config.set_property(
            speechsdk.PropertyId.Speech_SegmentationSilenceTimeoutMs,
            str(params.segmentation_silence_ms),
        )
    return config


def _apply_recognition_bounds(config: speechsdk.SpeechConfig, params: AzureSTTParams) -> None:
    # A refused connection is reported at once instead of retried; stopping waits at most this
    # long for the service (the SDK's default is 10 s, which its destructor also waits).
    config.set_property_by_name(_RETRY_CONNECT, "false")
    config.set_property_by_name(_STOP_TIMEOUT, str(math.ceil(params.stop_timeout_ms / 1000)))


class WatchedAzureSTTService(AzureSTTService):
    """pipecat's ``AzureSTTService`` with a watchdog, bounded teardown and a shared config.

    Recognition is continuous, with interim (``InterimTranscriptionFrame``) and final
    (``TranscriptionFrame``) results, on ``speech_config`` (shared by every call with the same
    setup; a runtime settings change gives the call a private copy first).

    The watchdog fails the call when the SDK has had no connection for
    ``params.connect_timeout_ms`` (the SDK itself waits 60 s for a handshake, and over a
    connection that never answers reports nothing at all), when the service has said nothing
    ``params.response_timeout_ms`` after the VAD heard the caller start speaking, or when the SDK
    cancels recognition with an error. Failing logs the reason, has ``apology`` spoken,
    and makes the service unusable, which ends the call.

    Stopping recognition (the SDK blocks, then its destructor blocks again) happens on a daemon
    thread, awaited at most :data:`STOP_WAIT_SECS`.
    """

    def __init__(
        self,
        *,
        speech_config: speechsdk.SpeechConfig,
        credentials: SpeechCredentials,
        params: AzureSTTParams,
        **kwargs: Any,
    ) -> None:
        settings = AzureSTTService.Settings(
            language=params.language,
            profanity=params.profanity,
            segmentation_silence_timeout_ms=params.segmentation_silence_ms,
        )
        super().__init__(
            api_key=credentials.key.get_secret_value(),
            region=None if credentials.endpoint else credentials.region,
            private_endpoint=credentials.endpoint or None,
            endpoint_id=params.endpoint_id,
            settings=settings,
            **kwargs,
        )
        self._private_config = self._speech_config
        _apply_recognition_bounds(self._private_config, params)
        self._speech_config = speech_config
        self._connect_timeout = params.connect_timeout_ms / 1000
        self._response_timeout = params.response_timeout_ms / 1000
        self._apology = params.apology
        self._connection: speechsdk.Connection | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._startup_error: str | None = None
        # Watchdog state (time.monotonic()); written by SDK threads, read on the event loop.
        self._waiting_for_connection_since: float | None = None
        self._waiting_for_answer_since: float | None = None

    @property
    def failure(self) -> str | None:
        """Why recognition failed, or None."""
        return self._failure

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if self._watchdog is None:
            self._watchdog = self.create_task(self._watch(), name=f"{self}-watchdog")

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_watchdog()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_watchdog()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        await self._stop_watchdog()
        await super().cleanup()

    async def _stop_watchdog(self) -> None:
        task, self._watchdog = self._watchdog, None
        if task is not None:
            await self.cancel_task(task)

    async def _update_settings(self, delta: Any) -> dict[str, Any]:
        # pipecat changes its SpeechConfig in place: never the one other calls share.
        self._speech_config = self._private_config
        return await super()._update_settings(delta)

    async def _handle_vad_user_started_speaking(self, frame: VADUserStartedSpeakingFrame) -> None:
        await super()._handle_vad_user_started_speaking(frame)
        if self._waiting_for_answer_since is None:
            self._waiting_for_answer_since = time.monotonic()

    async def _connect(self) -> None:
        if self._audio_stream is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            stream_format = speechsdk.audio.AudioStreamFormat(
                samples_per_second=self.sample_rate, channels=1
            )
            stream = speechsdk.audio.PushAudioInputStream(stream_format)
            recognizer = speechsdk.SpeechRecognizer(
                speech_config=self._speech_config,
                audio_config=speechsdk.audio.AudioConfig(stream=stream),
            )
            connection = speechsdk.Connection.from_recognizer(recognizer)
            connection.connected.connect(self._on_connected)
            connection.disconnected.connect(self._on_disconnected)
            recognizer.recognizing.connect(self._on_recognizing)
            recognizer.recognized.connect(self._on_recognized)
            recognizer.canceled.connect(self._on_handle_canceled)
            recognizer.speech_start_detected.connect(self._on_answer)
            recognizer.speech_end_detected.connect(self._on_answer)
            self._audio_stream, self._speech_recognizer = stream, recognizer
            self._connection = connection
            self._waiting_for_connection_since = time.monotonic()
            recognizer.start_continuous_recognition_async()
        except Exception as exc:
            # Reported by the watchdog once the pipeline has started.
            self._startup_error = f"could not start recognition: {exc}"

    async def _disconnect(self) -> None:
        recognizer, stream = self._speech_recognizer, self._audio_stream
        connection = self._connection
        self._speech_recognizer = self._audio_stream = self._connection = None
        self._waiting_for_connection_since = self._waiting_for_answer_since = None
        if recognizer is None and stream is None:
            return

        def stop() -> None:
            nonlocal recognizer, stream, connection
            try:
                if recognizer is not None:
                    for signal in (
                        recognizer.recognizing,
                        recognizer.recognized,
                        recognizer.canceled,
                        recognizer.speech_start_detected,
                        recognizer.speech_end_detected,
                    ):
                        signal.disconnect_all()
                    recognizer.stop_continuous_recognition_async().get()
                if stream is not None:
                    stream.close()
                if connection is not None:
                    connection.connected.disconnect_all()
                    connection.disconnected.disconnect_all()
            finally:
                # The last references: the SDK's destructors (which wait too) run on this thread.
                recognizer = stream = connection = None

        # After a failure the service is not answering: stopping would only wait for it.
        wait = 0.05 if self._failure is not None else STOP_WAIT_SECS
        try:
            await call_in_thread(stop, timeout=wait, name=f"{self}-stop")
        except TimeoutError:
            pass
        except Exception as exc:
            logger.warning(f"{self}: stopping recognition failed: {exc!r}")

    # -- SDK callbacks (SDK threads) --------------------------------------------------------------

    def _on_connected(self, _evt: Any) -> None:
        self._waiting_for_connection_since = None

    def _on_disconnected(self, _evt: Any) -> None:
        if self._waiting_for_connection_since is None and self._connection is not None:
            self._waiting_for_connection_since = time.monotonic()

    def _on_answer(self, _evt: Any) -> None:
        self._waiting_for_answer_since = None

    def _on_recognizing(self, evt: Any) -> None:
        self._waiting_for_answer_since = None
        self._on_handle_recognizing(evt)

    def _on_recognized(self, evt: Any) -> None:
        self._waiting_for_answer_since = None
        self._on_handle_recognized(evt)

    def _on_handle_canceled(self, evt: Any) -> None:
        details = evt.result.cancellation_details
        if details.reason == speechsdk.CancellationReason.Error:
            reason = f"recognition canceled: {details.error_details or details.code}"
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._fail_soon, reason)

    def _fail_soon(self, reason: str) -> None:
        """On the event loop: fail from a task the service owns."""
        if self._failure is None:
            self.create_task(self._fail(reason), name=f"{self}-fail")

    # -- failing ---------------------------------------------------------------------------------

    async def _watch(self) -> None:
        interval = min(0.2, self._connect_timeout / 4, self._response_timeout / 4)
        while self._failure is None:
            if self._startup_error is not None:
                await self._fail(self._startup_error)
                return
            await asyncio.sleep(interval)
            now = time.monotonic()
            since_connect = self._waiting_for_connection_since
            since_speech = self._waiting_for_answer_since
            if since_connect is not None and now - since_connect >= self._connect_timeout:
                await self._fail(
                    f"no connection to Azure Speech within {self._connect_timeout:g} s"
                )
            elif since_speech is not None and now - since_speech >= self._response_timeout:
                await self._fail(
                    f"no answer from Azure Speech {self._response_timeout:g} s after "
                    "the caller started speaking"
                )

    async def _fail(self, reason: str) -> None:
        if self._failure is not None:
            return
        self._failure = reason
        logger.error(f"{self}: Azure speech recognition failed, ending the call: {reason}")
        if self._apology:
            await self.push_frame(TTSSpeakFrame(self._apology))
        await self.push_error(f"Azure STT: {reason}", force_treat_as_permanent=True)


# --------------------------------------------------------------------------------------------
# The process's shared Speech resources
# --------------------------------------------------------------------------------------------


class AzureSpeech:
    """Everything Azure Speech that the calls of one process share: synthesizer pools (one per
    resource, output rate and SDK bounds) and recognizer configs (one per recognition setup)."""

    def __init__(self, pool_settings: SynthesizerPoolSettings | None = None) -> None:
        self.pool_settings = pool_settings or SynthesizerPoolSettings.from_env()
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, int, int, int], WarmPool[PooledSynthesizer]] = {}
        self._configs: dict[tuple[Any, ...], speechsdk.SpeechConfig] = {}
        self._probes: dict[str, dict[str, Any]] = {}

    # -- synthesis ---------------------------------------------------------------------------

    def synthesizer_factory(
        self, credentials: SpeechCredentials, rate: int, params: AzureTTSParams
    ) -> Callable[[], PooledSynthesizer]:
        """Makes one unconnected synthesizer for ``rate`` Hz raw PCM (cheap: no network)."""
        config = _synthesis_config(credentials, rate, params)
        return lambda: PooledSynthesizer(config, name=f"azure-tts-{rate}")

    def synthesizer_pool(
        self, credentials: SpeechCredentials, rate: int, params: AzureTTSParams
    ) -> WarmPool[PooledSynthesizer]:
        """The pool for this resource, rate and bounds; created (and started) on first use."""
        if rate not in OUTPUT_RATES:
            raise ValueError(f"Azure synthesis rate must be one of {OUTPUT_RATES}, got {rate}")
        key = (credentials.digest, rate, params.first_chunk_timeout_ms, params.max_retries)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                return pool
            make = self.synthesizer_factory(credentials, rate, params)
            settings = self.pool_settings
            connect_wait = max(1.0, params.first_chunk_timeout_ms / 1000)
            warm_ssml = _plain_ssml(params, WARMUP_TEXT) if settings.warmup == "speak" else None

            def create() -> PooledSynthesizer:
                item = make()
                try:
                    item.open(wait_secs=connect_wait)
                    if warm_ssml is not None:
                        item.warm_up(warm_ssml)
                except BaseException:
                    item.close()
                    raise
                return item

            pool = WarmPool(
                f"azure-tts-pool-{rate}",
                create=create,
                close=PooledSynthesizer.close,
                healthy=PooledSynthesizer.healthy,
                size=settings.size,
                max_age_secs=settings.max_age_secs,
            )
            self._pools[key] = pool
        logger.info(
            f"Azure Speech: synthesizer pool for {rate} Hz at {credentials.where}, "
            f"{settings.size} kept ready, replaced after {settings.max_age_secs:g} s"
            + ("" if rate in settings.rates else " (not in VOICEBOT_TTS_POOL_RATES: filling now)")
        )
        pool.start()
        return pool

    # -- recognition -------------------------------------------------------------------------

    def recognizer_config(
        self, credentials: SpeechCredentials, params: AzureSTTParams
    ) -> speechsdk.SpeechConfig:
        """The ready ``SpeechConfig`` for this resource and recognition setup."""
        key = (
            credentials.digest,
            params.language,
            params.segmentation_silence_ms,
            params.profanity,
            params.endpoint_id,
            params.stop_timeout_ms,
        )
        with self._lock:
            config = self._configs.get(key)
            if config is None:
                config = self._configs[key] = _recognition_config(credentials, params)
            return config

    def probe_recognition(
        self, credentials: SpeechCredentials, params: AzureSTTParams, rate: int = 16000
    ) -> bool:
        """Blocking: open a recognition connection and close it; records how it went."""
        config = self.recognizer_config(credentials, params)
        stream = speechsdk.audio.PushAudioInputStream(
            speechsdk.audio.AudioStreamFormat(samples_per_second=rate, channels=1)
        )
        recognizer = speechsdk.SpeechRecognizer(
            speech_config=config, audio_config=speechsdk.audio.AudioConfig(stream=stream)
        )
        connection = speechsdk.Connection.from_recognizer(recognizer)
        connected = threading.Event()
        connection.connected.connect(lambda _evt: connected.set())
        wait = params.connect_timeout_ms / 1000
        try:
            connection.open(True)
            ok = connected.wait(wait)
        finally:
            connection.connected.disconnect_all()
            connection.close()
            stream.close()
        result: dict[str, Any] = {"status": "ok" if ok else "unreachable"}
        if not ok:
            result["last_error"] = f"no connection to {credentials.where} within {wait:g} s"
            logger.warning(f"Azure Speech recognition: {result['last_error']}")
        with self._lock:
            self._probes[credentials.where] = result
        return ok

    # -- state -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``/health/ready``: each synthesizer pool and recognition probe."""
        with self._lock:
            pools = {f"{rate} Hz": pool.status() for (_, rate, _, _), pool in self._pools.items()}
            probes = dict(self._probes)
            configs = len(self._configs)
        empty = any(p["status"] != "ok" for p in pools.values())
        unreachable = any(p["status"] != "ok" for p in probes.values())
        return {
            "status": "degraded" if empty or unreachable else "ok",
            "tts_pools": pools,
            "stt": {"configs": configs, "probes": probes},
        }

    async def aclose(self) -> None:
        """Close every pool (idle synthesizers now; lent ones when their calls end)."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            await pool.aclose(timeout=0.5)


def _plain_ssml(params: AzureTTSParams, text: str) -> str:
    return (
        f"<speak version='1.0' xml:lang='{params.language}' "
        "xmlns='http://www.w3.org/2001/10/synthesis'>"
        f"<voice name='{params.voice}'>{text}</voice></speak>"
    )


def azure_speech(resources: SharedResources) -> AzureSpeech:
    """The process's :class:`AzureSpeech` (pool settings read from the environment once)."""
    return resources.get(RESOURCE_KEY, AzureSpeech, close=lambda speech: speech.aclose())


def speech_status(resources: SharedResources) -> dict[str, Any] | None:
    """Azure Speech's entry for ``/health/ready``, or None if no call or warm-up used it."""
    if RESOURCE_KEY not in resources:
        return None
    return azure_speech(resources).status()


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def _warm_stt(params: AzureSTTParams, resources: SharedResources) -> None:
    credentials = speech_credentials()
    speech = azure_speech(resources)
    speech.recognizer_config(credentials, params)
    speech.probe_recognition(credentials, params)


def _warm_tts(params: AzureTTSParams, resources: SharedResources) -> None:
    credentials = speech_credentials()
    speech = azure_speech(resources)
    settings = speech.pool_settings
    if settings.warmup == "off" or settings.size == 0:
        return
    pools = [speech.synthesizer_pool(credentials, rate, params) for rate in settings.rates]
    wait = 2 * max(1.0, params.first_chunk_timeout_ms / 1000)
    for pool in pools:
        if not pool.start(wait_secs=wait):
            status = pool.status()
            logger.warning(
                f"{pool.name}: {status['idle']} of {status['size']} synthesizers ready "
                f"after {wait:g} s; last error: {status['last_error']}"
            )


@provider("stt", "azure", AzureSTTParams, warm=_warm_stt)
def azure_stt(params: AzureSTTParams, context: BuildContext) -> WatchedAzureSTTService:
    """Azure AI Speech continuous recognition, interim and final transcripts."""
    credentials = speech_credentials(_environment(context))
    config = azure_speech(context.resources).recognizer_config(credentials, params)
    return WatchedAzureSTTService(
        speech_config=config,
        credentials=credentials,
        params=params,
        sample_rate=context.audio.in_rate,
    )


@provider("tts", "azure", AzureTTSParams, warm=_warm_tts)
def azure_tts(params: AzureTTSParams, context: BuildContext) -> PooledAzureTTSService:
    """Azure AI Speech streaming synthesis at the pipeline's output rate, pre-connected."""
    credentials = speech_credentials(_environment(context))
    rate = context.audio.out_rate
    speech = azure_speech(context.resources)
    pool = speech.synthesizer_pool(credentials, rate, params)
    return PooledAzureTTSService(
        pool=pool,
        make_synthesizer=speech.synthesizer_factory(credentials, rate, params),
        stall_timeout_secs=params.stall_timeout_ms / 1000,
        stop_timeout_secs=params.stop_timeout_ms / 1000,
        sample_rate=rate,
        settings=params.settings(),
    )
