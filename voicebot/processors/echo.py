"""The smallest useful processor: plays the caller's audio back to them."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicebot.build.registry import processor


@processor("echo", consumes=["audio_in"], emits=["audio_out"])
class EchoProcessor(FrameProcessor):
    """Turns each caller audio frame into bot audio, optionally quieter.

    ``gain`` scales the samples (1.0 = unchanged); frames pass through as they come, so the
    echo is as late as the transport's pacing and nothing more.
    """

    def __init__(self, gain: float = 1.0, **kwargs: Any) -> None:
        super().__init__(enable_direct_mode=True, **kwargs)
        self._gain = gain

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            audio = frame.audio if self._gain == 1.0 else _scale(frame.audio, self._gain)
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
                )
            )
        else:
            await self.push_frame(frame, direction)


def _scale(pcm: bytes, gain: float) -> bytes:
    import numpy as np

    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * gain
    return bytes(np.clip(samples, -32768, 32767).astype(np.int16).tobytes())
