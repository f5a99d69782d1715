"""Azure Communication Services (ACS) bidirectional media streaming serializer.

ACS connects to our WebSocket as a client and sends JSON text frames: ``AudioMetadata`` first, then
``AudioData`` every 20 ms (base64 PCM16 mono at 16000 or 24000 Hz) and ``DtmfData`` on key presses.
We answer with PascalCase ``AudioData`` frames and ``StopAudio`` on barge-in.

Chunking and pacing of outbound audio are the transport's job. With pipecat's
``FastAPIWebsocketTransport`` set ``audio_out_10ms_chunks=2`` (20 ms chunks, sent in real time)
and ``audio_out_sample_rate`` to the call rate: every ``AudioData`` then carries exactly 20 ms
(640 bytes at 16 kHz, 960 at 24 kHz). If the rates differ this serializer resamples each chunk,
and since a stream resampler releases audio unevenly the messages stop being exactly 20 ms long.
"""

import base64
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.resamplers.base_audio_resampler import SoxrQuality
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer

ACS_SAMPLE_RATES = (16000, 24000)
"""Call sample rates ACS streams, in Hz."""

ACS_DEFAULT_SAMPLE_RATE = 16000
"""Call rate in Hz assumed until ``AudioMetadata`` says otherwise."""

STOP_AUDIO_MESSAGE = '{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}'
"""The exact frame that makes ACS drop the bot audio it has buffered."""


class ACSMediaSerializer(FrameSerializer):
    """Serializer for ACS bidirectional media streaming over WebSocket.

    ``deserialize`` turns ``AudioData`` into ``InputAudioRawFrame`` at the pipeline input rate
    (silent frames included: they carry silence and mark time) and ``DtmfData`` into
    ``InputDTMFFrame``; ``AudioMetadata`` sets the call rate and yields no frame. ``serialize``
    turns ``OutputAudioRawFrame`` (TTS audio included) into ``AudioData`` at the call rate and
    ``InterruptionFrame`` into ``StopAudio``.

    Bad input never raises: ``deserialize`` returns None, counts it in ``bad_input`` under a
    stable kind name (``binary_frame``, ``oversize``, ``invalid_json``, ``unknown_kind``,
    ``malformed``, ``unsupported_rate``, ``audio_before_metadata``, ``invalid_base64``,
    ``odd_length_pcm``, ``invalid_dtmf``) and logs the first of each kind with the call id.
    Then it awaits ``on_bad_input(kind)``, if given: the hook where a server decides that one
    call's bad input has become a flood (see :mod:`voicebot.server.media`).
    """

    class InputParams(FrameSerializer.InputParams):
        """Configuration parameters for ACSMediaSerializer.

        Parameters:
            sample_rate: Call rate in Hz (16000 or 24000) configured when answering the call
                (``AudioFormat``). Used for output until ``AudioMetadata`` arrives, and lets
                ``AudioData`` be accepted before it. If ``AudioMetadata`` names another rate,
                the metadata wins (it describes the bytes that follow) and a warning is logged.
                None: 16000 Hz until ``AudioMetadata``, and audio before it is rejected.
            max_message_bytes: Largest inbound message accepted, in bytes of UTF-8 text;
                larger ones are counted as ``oversize``. None disables the check.
            resampler_quality: soxr preset for converting between the call rate and the
                pipeline rates. soxr's stream resampler holds input back and releases it in
                bursts: fed 20 ms frames, "VHQ" (pipecat's default) lags up to 76 ms and emits
                80 ms bursts, "HQ" lags up to 37 ms, "LQ" up to 20 ms (still filtering aliases
                by ~77 dB), "QQ" ~0 ms but without an anti-aliasing filter. Rates that need no
                conversion pass through untouched.
            stale_audio_ms: Outbound audio serialized less than this many ms after a
                ``StopAudio`` is dropped. pipecat's output transport still writes the chunk it
                had in hand when an interruption came, after the ``StopAudio``; ACS would play
                it. A new answer cannot start that soon after a barge-in (the caller is
                speaking). 0 disables.
        """

        sample_rate: int | None = None
        max_message_bytes: int | None = 64 * 1024
        resampler_quality: SoxrQuality = "LQ"
        stale_audio_ms: float = 100.0

    def __init__(
        self,
        call_id: str = "",
        params: InputParams | None = None,
        *,
        on_bad_input: Callable[[str], Awaitable[None]] | None = None,
    ):
        """Initialize the serializer.

        Args:
            call_id: ACS call connection id, used in log lines.
            params: Configuration parameters.
            on_bad_input: Awaited with the kind of every rejected inbound message, after it
                was counted; it runs in the transport's receive loop, so it must be quick.

        Raises:
            ValueError: ``params.sample_rate`` is not a rate ACS streams.
        """
        params = params or ACSMediaSerializer.InputParams()
        if params.sample_rate is not None and params.sample_rate not in ACS_SAMPLE_RATES:
            raise ValueError(
                f"ACSMediaSerializer: sample_rate={params.sample_rate!r} is not an ACS rate; "
                f"use one of {ACS_SAMPLE_RATES} Hz or None"
            )
        super().__init__(params)
        self._params: ACSMediaSerializer.InputParams = params
        self._call_id = call_id
        self._on_bad_input = on_bad_input
        self._call_rate = params.sample_rate or ACS_DEFAULT_SAMPLE_RATE
        self._rate_known = params.sample_rate is not None
        self._pipeline_in_rate: int | None = None
        self._stopped_at: float | None = None  # time.monotonic() of the last StopAudio
        self._new_resamplers()
        self.bad_input: Counter[str] = Counter()
        """Rejected inbound messages by kind, for metrics and tests."""

    @property
    def call_sample_rate(self) -> int:
        """The call's audio rate in Hz (ACS side)."""
        return self._call_rate

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        """Record the pipeline input rate (Hz) that inbound audio is resampled to."""
        self._pipeline_in_rate = setup.audio_in_sample_rate

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """Convert an output frame into an ACS message.

        Returns:
            ``AudioData`` JSON with the frame's audio resampled to the call rate, ``StopAudio``
            JSON for an ``InterruptionFrame``, or None for other frames (and for audio the
            resampler is still holding, or stale audio, see ``stale_audio_ms``).
        """
        if isinstance(frame, InterruptionFrame):
            await self._output_resampler.reset()
            self._stopped_at = time.monotonic()
            return STOP_AUDIO_MESSAGE
        if isinstance(frame, OutputAudioRawFrame):
            if self._stopped_at is not None:
                if (time.monotonic() - self._stopped_at) * 1000 < self._params.stale_audio_ms:
                    return None
                self._stopped_at = None
            pcm = await self._output_resampler.resample(
                frame.audio, frame.sample_rate, self._call_rate
            )
            if not pcm:
                return None
            message = {
                "Kind": "AudioData",
                "AudioData": {"Data": base64.b64encode(pcm).decode("ascii")},
                "StopAudio": None,
            }
            return json.dumps(message, separators=(",", ":"))
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """Convert an ACS message into a frame; None for metadata and for bad input."""
        try:
            return await self._deserialize(data)
        except _BadInput as bad:
            self._count_bad_input(bad.kind, bad.detail)
            if self._on_bad_input is not None:
                await self._on_bad_input(bad.kind)
            return None

    async def _deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            raise _BadInput("binary_frame", f"{len(data)} bytes")
        limit = self._params.max_message_bytes
        if limit is not None and len(data.encode("utf-8", "surrogatepass")) > limit:
            raise _BadInput("oversize", f"{len(data)} characters, limit {limit} bytes")
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            raise _BadInput("invalid_json", repr(data[:40])) from None
        kind = message.get("kind") if isinstance(message, dict) else None
        if kind == "AudioData":
            return await self._audio_data(message.get("audioData"))
        if kind == "AudioMetadata":
            self._audio_metadata(message.get("audioMetadata"))
            return None
        if kind == "DtmfData":
            return self._dtmf_data(message.get("dtmfData"))
        raise _BadInput("unknown_kind", repr(kind)[:40])

    async def _audio_data(self, payload: Any) -> Frame | None:
        if not isinstance(payload, dict):
            raise _BadInput("malformed", "audioData is not an object")
        if not self._rate_known:
            raise _BadInput("audio_before_metadata", "AudioData before AudioMetadata")
        encoded = payload.get("data")
        if payload.get("silent") is True and not encoded:
            pcm = bytes(self._call_rate // 50 * 2)  # one 20 ms frame of silence
        elif not isinstance(encoded, str) or not encoded:
            raise _BadInput("malformed", "audioData.data is missing or not a string")
        else:
            try:
                pcm = base64.b64decode(encoded, validate=True)
            except ValueError:  # binascii.Error, or non-ASCII text
                raise _BadInput("invalid_base64", f"{len(encoded)} characters") from None
        if len(pcm) % 2:
            raise _BadInput("odd_length_pcm", f"{len(pcm)} bytes")
        out_rate = self._pipeline_in_rate or self._call_rate
        audio = await self._input_resampler.resample(pcm, self._call_rate, out_rate)
        if not audio:
            return None
        return InputAudioRawFrame(audio=audio, sample_rate=out_rate, num_channels=1)

    def _audio_metadata(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise _BadInput("malformed", "audioMetadata is not an object")
        rate = payload.get("sampleRate")
        if type(rate) is not int or rate not in ACS_SAMPLE_RATES:
            raise _BadInput("unsupported_rate", f"sampleRate={rate!r}")
        if self._params.sample_rate is not None and rate != self._params.sample_rate:
            logger.warning(
                f"ACS call {self._call_id}: AudioMetadata says {rate} Hz, configured "
                f"{self._params.sample_rate} Hz; using {rate} Hz"
            )
        if rate != self._call_rate:
            self._call_rate = rate
            self._new_resamplers()
        self._rate_known = True

    def _dtmf_data(self, payload: Any) -> Frame | None:
        digit = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(digit, str):
            raise _BadInput("malformed", "dtmfData.data is missing or not a string")
        try:
            return InputDTMFFrame(button=KeypadEntry(digit))
        except ValueError:
            raise _BadInput("invalid_dtmf", repr(digit[:10])) from None

    def _new_resamplers(self) -> None:
        # A stream resampler is bound to one rate pair, so a new call rate needs new ones.
        options = {
            "quality": self._params.resampler_quality,
            "clear_after_secs": self._params.resampler_clear_after_secs,
        }
        self._input_resampler = create_stream_resampler(**options)
        self._output_resampler = create_stream_resampler(**options)

    def _count_bad_input(self, kind: str, detail: str) -> None:
        self.bad_input[kind] += 1
        if self.bad_input[kind] == 1:
            logger.warning(
                f"ACS call {self._call_id}: dropped bad media message ({kind}): {detail}; "
                "further ones of this kind are only counted"
            )


class _BadInput(Exception):
    """An inbound message we drop; ``kind`` is the ``bad_input`` counter key."""

    def __init__(self, kind: str, detail: str):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail
