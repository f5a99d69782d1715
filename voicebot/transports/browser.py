"""The browser conversation serializer: raw PCM16 binary frames both ways, JSON text for control.

The page (``GET /conversation``) announces its rate in a first JSON message (handled by the
endpoint, :mod:`voicebot.server.realtime`), then streams the microphone as binary WebSocket
messages of little-endian PCM16 mono at that rate, any length (an even number of bytes). The
bot's speech comes back the same way, in 20 ms messages at the same rate, and a barge-in sends
the text ``{"type":"interrupt"}`` so the page drops the audio it has queued. Text messages from
the page are JSON control messages; ``{"type":"stop"}`` ends the conversation.

Chunking and pacing of outbound audio are the transport's job (``audio_out_sample_rate`` = the
announced rate, ``audio_out_10ms_chunks=2``): then no resampling happens on the way out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from pipecat.audio.resamplers.base_audio_resampler import SoxrQuality
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import Frame, InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer

BROWSER_SAMPLE_RATES = (16000, 24000)
"""Rates a page may announce, in Hz (as ``transports/browser.yaml`` says)."""

INTERRUPT_MESSAGE = '{"type":"interrupt"}'
"""Sent on barge-in: the page drops the bot audio it has not played yet."""

#: Control messages the page may send after ``start``.
CONTROL_TYPES = ("stop",)


class BrowserAudioSerializer(FrameSerializer):
    """Serializer for the browser conversation WebSocket (see the module docstring).

    ``deserialize`` turns binary messages into ``InputAudioRawFrame`` at the pipeline input rate
    and hands JSON control messages to ``on_control(type, message)``; ``serialize`` turns
    ``OutputAudioRawFrame`` into PCM16 bytes at the page's rate and ``InterruptionFrame`` into
    :data:`INTERRUPT_MESSAGE`.

    Bad input never raises: it is dropped and counted in ``bad_input`` by kind
    (``odd_length_pcm``, ``oversize``, ``invalid_json``, ``unknown_type``), the first of each
    kind logged with the call id.
    """

    class InputParams(FrameSerializer.InputParams):
        """Configuration parameters for BrowserAudioSerializer.

        Parameters:
            sample_rate: The page's rate in Hz (one of :data:`BROWSER_SAMPLE_RATES`).
            max_message_bytes: Largest inbound message accepted, in bytes; larger ones are
                counted as ``oversize``. None disables the check.
            resampler_quality: soxr preset for converting between the page's rate and the
                pipeline's (``LQ``: low lag, see ``ACSMediaSerializer.InputParams``).
        """

        sample_rate: int = 16000
        max_message_bytes: int | None = 64 * 1024
        resampler_quality: SoxrQuality = "LQ"

    def __init__(
        self,
        call_id: str = "",
        params: InputParams | None = None,
        *,
        on_control: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """Initialize the serializer.

        Args:
            call_id: The conversation's id, used in log lines.
            params: Configuration parameters.
            on_control: Awaited with each valid control message's type and body; it runs in
                the transport's receive loop, so it must be quick.

        Raises:
            ValueError: ``params.sample_rate`` is not one of :data:`BROWSER_SAMPLE_RATES`.
        """
        params = params or BrowserAudioSerializer.InputParams()
        if params.sample_rate not in BROWSER_SAMPLE_RATES:
            raise ValueError(
                f"BrowserAudioSerializer: sample_rate={params.sample_rate!r} is not supported; "
                f"use one of {BROWSER_SAMPLE_RATES} Hz"
            )
        super().__init__(params)
        self._params: BrowserAudioSerializer.InputParams = params
        self._call_id = call_id
        self._on_control = on_control
        self._pipeline_in_rate: int | None = None
        options = {"quality": params.resampler_quality}
        self._input_resampler = create_stream_resampler(**options)
        self._output_resampler = create_stream_resampler(**options)
        self.bad_input: Counter[str] = Counter()
        """Rejected inbound messages by kind, for logs and tests."""

    @property
    def sample_rate(self) -> int:
        """The page's audio rate in Hz."""
        return self._params.sample_rate

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        """Record the pipeline input rate (Hz) that inbound audio is resampled to."""
        self._pipeline_in_rate = setup.audio_in_sample_rate

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """PCM16 bytes for bot audio, the interrupt message for a barge-in, else None."""
        if isinstance(frame, InterruptionFrame):
            await self._output_resampler.reset()
            return INTERRUPT_MESSAGE
        if isinstance(frame, OutputAudioRawFrame):
            pcm = await self._output_resampler.resample(
                frame.audio, frame.sample_rate, self._params.sample_rate
            )
            return pcm or None
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """An audio frame for a binary message; None for control messages and bad input."""
        limit = self._params.max_message_bytes
        if isinstance(data, str):
            if limit is not None and len(data) > limit:
                self._bad("oversize", f"{len(data)} characters")
            else:
                await self._control(data)
            return None
        if limit is not None and len(data) > limit:
            self._bad("oversize", f"{len(data)} bytes, limit {limit}")
            return None
        if len(data) % 2:
            self._bad("odd_length_pcm", f"{len(data)} bytes")
            return None
        if not data:
            return None
        out_rate = self._pipeline_in_rate or self._params.sample_rate
        audio = await self._input_resampler.resample(
            bytes(data), self._params.sample_rate, out_rate
        )
        if not audio:
            return None
        return InputAudioRawFrame(audio=audio, sample_rate=out_rate, num_channels=1)

    async def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            self._bad("invalid_json", repr(text[:40]))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in CONTROL_TYPES:
            self._bad("unknown_type", repr(kind)[:40])
        elif self._on_control is not None:
            await self._on_control(str(kind), message)

    def _bad(self, kind: str, detail: str) -> None:
        self.bad_input[kind] += 1
        if self.bad_input[kind] == 1:
            logger.warning(
                f"browser conversation {self._call_id}: dropped bad message ({kind}): {detail}; "
                "further ones of this kind are only counted"
            )
